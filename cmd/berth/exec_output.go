package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berthci/berth/host/console"
	"github.com/berthci/berth/host/job"
	"github.com/berthci/berth/host/localrun"
	"github.com/berthci/berth/host/trace"
)

// execUI shows a local run: job logs with colored prefixes, one line per
// collapsed section, a live status line on a terminal, a summary; or, with
// --json, one JSON object per line for every event and log line.
type execUI struct {
	opts   *execOptions
	json   *json.Encoder
	jsonMu sync.Mutex
	screen *console.Screen
	status *statusLine // nil unless stdout is a terminal
	many   bool        // prefix job lines with the job's name

	mu      sync.Mutex
	running map[string]time.Time
	done    int
	failed  int
	total   int
	stop    chan struct{}
	stopped chan struct{}
}

func execIsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func newExecUI(stdout io.Writer, opts *execOptions) *execUI {
	ui := &execUI{opts: opts, running: map[string]time.Time{}}
	if opts.jsonOut {
		ui.json = json.NewEncoder(stdout)
		return ui
	}
	w := stdout
	if execIsTerminal(stdout) && !opts.list {
		ui.status = &statusLine{w: stdout}
		w = ui.status
		ui.stop, ui.stopped = make(chan struct{}), make(chan struct{})
		go ui.tick()
	}
	ui.screen = console.NewScreen(w, !opts.noColor)
	return ui
}

// tick redraws the status line every second.
func (ui *execUI) tick() {
	defer close(ui.stopped)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ui.stop:
			ui.status.set("")
			return
		case <-t.C:
			ui.status.set(ui.statusText())
		}
	}
}

func (ui *execUI) statusText() string {
	ui.mu.Lock()
	defer ui.mu.Unlock()
	if len(ui.running) == 0 && ui.done == 0 {
		return ""
	}
	names := make([]string, 0, len(ui.running))
	for n := range ui.running {
		names = append(names, n)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = fmt.Sprintf("%s (%s)", n, time.Since(ui.running[n]).Truncate(time.Second))
	}
	run := "nothing running"
	if len(parts) > 0 {
		run = "running: " + strings.Join(parts, ", ")
	}
	return fmt.Sprintf("%s | %d/%d done, %d failed", run, ui.done, ui.total, ui.failed)
}

// SetJobs says how many jobs the run has.
func (ui *execUI) SetJobs(n int) {
	ui.mu.Lock()
	defer ui.mu.Unlock()
	ui.total = n
	ui.many = n > 1
}

// Close stops the status line.
func (ui *execUI) Close() {
	if ui.stop != nil {
		close(ui.stop)
		<-ui.stopped
		ui.stop = nil
	}
}

type jsonEvent struct {
	Time         string   `json:"time"`
	Type         string   `json:"type"`
	Job          string   `json:"job,omitempty"`
	Stage        string   `json:"stage,omitempty"`
	Status       string   `json:"status,omitempty"`
	Reason       string   `json:"failure_reason,omitempty"`
	Allowed      bool     `json:"allowed_failure,omitempty"`
	Attempt      int      `json:"attempt,omitempty"`
	AllowFailure *bool    `json:"allow_failure,omitempty"`
	DurationMS   *int64   `json:"duration_ms,omitempty"`
	ExitCode     *int     `json:"exit_code,omitempty"`
	Coverage     string   `json:"coverage,omitempty"`
	Detail       string   `json:"detail,omitempty"`
	Text         string   `json:"text,omitempty"`
	Needs        []string `json:"needs,omitempty"`
	When         string   `json:"when,omitempty"`
}

func (ui *execUI) emit(e jsonEvent) {
	if e.Time == "" {
		e.Time = time.Now().UTC().Format(time.RFC3339Nano)
	}
	ui.jsonMu.Lock()
	defer ui.jsonMu.Unlock()
	ui.json.Encode(e)
}

// Warning shows something berth wants the user to know.
func (ui *execUI) Warning(text string) {
	if ui.json != nil {
		ui.emit(jsonEvent{Type: "warning", Text: text})
		return
	}
	ui.screen.Printf("%s\n", ui.screen.Color(33, "warning: "+text))
}

// Event implements localrun.UI.
func (ui *execUI) Event(e localrun.Event) {
	ui.mu.Lock()
	switch e.Type {
	case "job_started":
		ui.running[e.Job] = e.Time
	case "job_finished", "job_skipped":
		delete(ui.running, e.Job)
		ui.done++
		if e.Status == string(job.Failed) && !e.AllowedFailure {
			ui.failed++
		}
	case "job_retry":
		delete(ui.running, e.Job)
	}
	ui.mu.Unlock()
	if ui.json != nil {
		je := jsonEvent{Time: e.Time.UTC().Format(time.RFC3339Nano), Type: e.Type, Job: e.Job, Stage: e.Stage, Status: e.Status,
			Reason: e.FailureReason, Allowed: e.AllowedFailure, Attempt: e.Attempt, Coverage: e.Coverage, Detail: e.Detail}
		if e.Type == "job_finished" || e.Type == "job_retry" {
			ms, code, af := e.Duration.Milliseconds(), e.ExitCode, e.AllowFailure
			je.DurationMS, je.ExitCode, je.AllowFailure = &ms, &code, &af
		}
		ui.emit(je)
		return
	}
	var text string
	switch e.Type {
	case "job_skipped":
		text = ui.screen.Color(90, fmt.Sprintf("%s: %s", e.Status, e.Detail))
	case "job_retry":
		text = ui.screen.Color(33, fmt.Sprintf("attempt %d failed (%s); retrying", e.Attempt, e.Detail))
	case "job_notice":
		text = ui.screen.Color(33, e.Detail)
	default:
		return
	}
	w := ui.screen.Job(e.Job, 0, true)
	fmt.Fprintln(w, text)
	w.Close()
}

// JobOutput implements localrun.UI.
func (ui *execUI) JobOutput(name string, index int) io.WriteCloser {
	if ui.json != nil {
		return &jsonLog{ui: ui, job: name}
	}
	w := ui.screen.Job(name, index, ui.many)
	if ui.opts.verbose {
		return w
	}
	return &sectionFilter{w: w, color: !ui.opts.noColor}
}

// jsonLog turns a job's trace into log events, one per line.
type jsonLog struct {
	ui      *execUI
	job     string
	partial []byte
}

// traceMarkup is what a JSON log line leaves out: section markers and ANSI
// escapes.
var traceMarkup = regexp.MustCompile(trace.MarkerPattern().String() + `|\x1b\[[0-9;]*[A-Za-z]`)

func (j *jsonLog) Write(p []byte) (int, error) {
	j.partial = append(j.partial, p...)
	for {
		i := bytes.IndexByte(j.partial, '\n')
		if i < 0 {
			return len(p), nil
		}
		j.line(j.partial[:i])
		j.partial = j.partial[i+1:]
	}
}

func (j *jsonLog) line(l []byte) {
	text := strings.TrimRight(string(traceMarkup.ReplaceAll(l, nil)), "\r")
	if text == "" && len(l) > 0 {
		return // only markers
	}
	j.ui.emit(jsonEvent{Type: "log", Job: j.job, Text: text})
}

func (j *jsonLog) Close() error {
	if len(j.partial) > 0 {
		j.line(j.partial)
		j.partial = nil
	}
	return nil
}

// sectionFilter shows each collapsible section of a trace (all but the
// script and after_script, and those marked collapsed=true) as one line:
// its header and how long it took.
type sectionFilter struct {
	w       io.WriteCloser
	color   bool
	partial []byte
	stack   []traceSection
}

type traceSection struct {
	name, header string
	collapsed    bool
	start        time.Time
}

func (s *sectionFilter) hidden() bool {
	for _, sec := range s.stack {
		if sec.collapsed {
			return true
		}
	}
	return false
}

func (s *sectionFilter) Write(p []byte) (int, error) {
	s.partial = append(s.partial, p...)
	for {
		i := bytes.IndexByte(s.partial, '\n')
		if i < 0 {
			return len(p), nil
		}
		s.line(s.partial[:i+1])
		s.partial = s.partial[i+1:]
	}
}

func (s *sectionFilter) line(l []byte) {
	var out bytes.Buffer
	pos := 0
	for _, m := range trace.MarkerPattern().FindAllSubmatchIndex(l, -1) {
		if !s.hidden() {
			out.Write(l[pos:m[0]])
		}
		kind, name := string(l[m[2]:m[3]]), string(l[m[4]:m[5]])
		opts := ""
		if m[6] >= 0 {
			opts = string(l[m[6]:m[7]])
		}
		pos = m[1]
		if kind == "start" {
			header := ""
			if end := bytes.IndexByte(l[pos:], '\n'); end >= 0 {
				header = strings.TrimRight(string(l[pos:pos+end]), "\r")
			}
			collapsed := (name != "step_script" && name != "after_script") || strings.Contains(opts, "collapsed=true")
			s.stack = append(s.stack, traceSection{name: name, header: header, collapsed: collapsed, start: time.Now()})
			if collapsed {
				pos = len(l) // the header is shown when the section ends
				break
			}
			continue
		}
		for k := len(s.stack) - 1; k >= 0; k-- {
			if s.stack[k].name != name {
				continue
			}
			sec := s.stack[k]
			s.stack = s.stack[:k]
			if sec.collapsed && !s.hidden() && sec.header != "" {
				d := time.Since(sec.start).Round(time.Millisecond)
				line := fmt.Sprintf("%s (%s)", sec.header, d)
				if s.color {
					line = "\x1b[90m" + line + "\x1b[0m"
				}
				out.WriteString(line + "\n")
			}
			break
		}
	}
	if pos < len(l) && !s.hidden() {
		out.Write(l[pos:])
	}
	if out.Len() > 0 {
		s.w.Write(out.Bytes())
	}
}

func (s *sectionFilter) Close() error {
	if len(s.partial) > 0 {
		s.line(s.partial)
		s.partial = nil
	}
	return s.w.Close()
}

// statusLine keeps one line at the bottom of a terminal: everything
// written goes above it.
type statusLine struct {
	mu   sync.Mutex
	w    io.Writer
	text string
}

func (s *statusLine) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.text != "" {
		io.WriteString(s.w, "\r\x1b[K")
	}
	n, err := s.w.Write(p)
	if s.text != "" {
		io.WriteString(s.w, s.text)
	}
	return n, err
}

func (s *statusLine) set(text string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.text != "" {
		io.WriteString(s.w, "\r\x1b[K")
	}
	s.text = text
	if text != "" {
		io.WriteString(s.w, "\x1b[7m"+text+"\x1b[0m")
		s.text = "\x1b[7m" + text + "\x1b[0m"
	}
}

// List prints the jobs of the plan: stage, needs, what rules make of them.
func (ui *execUI) List(plan *localrun.Plan) error {
	if !plan.Runs {
		ui.Warning("workflow:rules: " + plan.Reason + ": GitLab would not create this pipeline")
	}
	rows := append(append([]*localrun.PlannedJob{}, plan.Jobs...), plan.Excluded...)
	if ui.json != nil {
		for _, pj := range rows {
			af := pj.Decision.AllowFailure
			ui.emit(jsonEvent{Type: "job", Job: pj.Job.Name, Stage: pj.Job.Stage, When: pj.Decision.When,
				Needs: needNames(plan, pj), AllowFailure: &af, Detail: pj.Decision.Reason})
		}
		return nil
	}
	var sb strings.Builder
	tw := tabwriter.NewWriter(&sb, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "JOB\tSTAGE\tNEEDS\tWHEN\tALLOW_FAILURE\tWHY")
	for _, pj := range rows {
		needs := "(stage)"
		if pj.NeedsBased || pj.Decision.When == "never" {
			needs = strings.Join(needNames(plan, pj), ", ")
			if needs == "" {
				needs = "-"
			}
		}
		af := "no"
		if pj.Decision.AllowFailure {
			af = "yes"
		}
		if pj.Decision.When == "never" {
			af = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", pj.Job.Name, pj.Job.Stage, needs, pj.Decision.When, af, pj.Decision.Reason)
	}
	tw.Flush()
	ui.screen.Printf("%s", sb.String())
	return nil
}

func needNames(plan *localrun.Plan, pj *localrun.PlannedJob) []string {
	var out []string
	if pj.Decision.When == "never" || pj.NeedsBased {
		for _, n := range pj.Job.Needs {
			out = append(out, n.Job)
		}
		return out
	}
	for _, d := range pj.Deps {
		out = append(out, plan.Jobs[d].Job.Name)
	}
	return out
}

// Summary prints the table of jobs.
func (ui *execUI) Summary(results []localrun.Result, total time.Duration) {
	ui.Close()
	failed := false
	for _, r := range results {
		failed = failed || r.Failed()
	}
	if ui.json != nil {
		status := "success"
		if failed {
			status = "failed"
		}
		ms := total.Milliseconds()
		ui.emit(jsonEvent{Type: "pipeline_finished", Status: status, DurationMS: &ms})
		return
	}
	var sb strings.Builder
	tw := tabwriter.NewWriter(&sb, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nJOB\tSTAGE\tSTATUS\tDURATION\tALLOW_FAILURE\t")
	for _, r := range results {
		status := r.Status
		color := 90
		switch {
		case r.Status == string(job.Success):
			color = 32
		case r.Status == string(job.Failed) && r.AllowedFailure:
			status, color = "failed (allowed)", 33
		case r.Failed():
			color = 31
		}
		if r.Attempts > 1 {
			status += fmt.Sprintf(" (attempt %d)", r.Attempts)
		}
		dur := "-"
		if r.Duration > 0 {
			dur = r.Duration.Round(time.Millisecond).String()
		}
		af := "no"
		if r.AllowFailure {
			af = "yes"
			if len(r.AllowFailureExitCodes) > 0 {
				af = "exit codes " + strings.Trim(strings.Join(strings.Fields(fmt.Sprint(r.AllowFailureExitCodes)), ","), "[]")
			}
		}
		detail := r.Detail
		if r.Coverage != "" {
			detail = strings.TrimSpace("coverage " + r.Coverage + "% " + detail)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, r.Stage, ui.screen.Color(color, status), dur, af, detail)
	}
	tw.Flush()
	verdict := ui.screen.Color(32, "Pipeline succeeded")
	if failed {
		verdict = ui.screen.Color(31, "Pipeline failed")
	}
	ui.screen.Printf("%s%s in %s\n", sb.String(), verdict, total.Round(time.Millisecond))
}
