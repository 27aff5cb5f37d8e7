package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/berthci/berth/host/console"
	"github.com/berthci/berth/host/job"
	"github.com/berthci/berth/host/pipeline"
	"github.com/berthci/berth/host/script"
	"github.com/berthci/berth/plugins"
	"github.com/berthci/berth/sdk/archive"
)

// execOptions are berth exec's own flags.
type execOptions struct {
	dir         string
	file        string
	executor    string
	pluginDir   string
	config      string
	logLevel    string
	grace       time.Duration
	concurrency int
	noColor     bool
	pluginSHA   string
}

func (o *execOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&o.dir, "C", ".", "run in this folder (where .gitlab-ci.yml is)")
	fs.StringVar(&o.file, "file", ".gitlab-ci.yml", "the pipeline file, relative to -C")
	fs.StringVar(&o.executor, "executor", "shell", "the executor that runs the jobs")
	fs.StringVar(&o.pluginDir, "plugin-dir", "", "look for executor plugins in this folder first")
	fs.StringVar(&o.config, "config", "", "a config.toml whose [runners.<executor>] table holds the executor's settings")
	fs.StringVar(&o.logLevel, "log-level", "warn", "log level: debug, info, warn, error")
	fs.DurationVar(&o.grace, "grace", job.DefaultGracePeriod, "how long a stopped script gets between SIGTERM and SIGKILL")
	fs.IntVar(&o.concurrency, "concurrency", runtime.NumCPU(), "jobs of one stage run at the same time")
	fs.BoolVar(&o.noColor, "no-color", false, "no ANSI colors in berth's own output")
	fs.StringVar(&o.pluginSHA, "plugin-sha256", "", "refuse to start the executor plugin unless its file has this sha256")
}

// scanExecutorFlags finds --executor and --plugin-dir before the full
// parse, which needs the executor's settings to know all flags.
func scanExecutorFlags(args []string) (executor, pluginDir string) {
	executor = "shell"
	for i := 0; i < len(args); i++ {
		a := strings.TrimLeft(args[i], "-")
		if args[i] == "--" {
			break
		}
		for _, name := range []string{"executor", "plugin-dir"} {
			val := ""
			switch {
			case a == name && i+1 < len(args) && strings.HasPrefix(args[i], "-"):
				val = args[i+1]
			case strings.HasPrefix(a, name+"=") && strings.HasPrefix(args[i], "-"):
				val = strings.TrimPrefix(a, name+"=")
			default:
				continue
			}
			if name == "executor" {
				executor = val
			} else {
				pluginDir = val
			}
		}
	}
	return executor, pluginDir
}

func execCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	executor, pluginDir := scanExecutorFlags(args)
	bootLog, err := newLogger(stderr, "warn")
	if err != nil {
		return err
	}
	found, err := discover(pluginDir, bootLog)
	if err != nil {
		return err
	}
	p, ok := found[executor]
	if !ok {
		return fmt.Errorf("no executor %q (have: %s; external ones are files named %s<name> in the plugin folders)",
			executor, strings.Join(plugins.Names(found), ", "), plugins.FilePrefix)
	}

	var opts execOptions
	fs := flag.NewFlagSet("berth exec", flag.ContinueOnError)
	fs.SetOutput(stderr)
	opts.register(fs)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: berth exec [flags] [JOB...]\n\nRuns the jobs of a local .gitlab-ci.yml (all of them, or those named) stage by stage.\n\nFlags (those starting with --%s- are the %s executor's settings):\n", executor, executor)
		fs.PrintDefaults()
	}
	// The executor's settings become flags: start it to learn them.
	sup := plugins.NewSupervisor(p, nil, plugins.StartOptions{Log: bootLog, SHA256: shaFromArgs(args)})
	defer sup.Close()
	info, err := sup.Info(ctx)
	if err != nil {
		return err
	}
	flagSettings := settingFlags(fs, info)
	jobNames, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	log, err := newLogger(stderr, opts.logLevel)
	if err != nil {
		return err
	}
	settings := map[string]any{}
	if opts.config != "" {
		if settings, err = loadExecutorTable(opts.config, executor); err != nil {
			return err
		}
	}
	for k, v := range flagSettings() {
		settings[k] = v
	}
	if err := sup.Configure(ctx, settings); err != nil {
		return err
	}

	dir, err := filepath.Abs(opts.dir)
	if err != nil {
		return err
	}
	pl, err := pipeline.Load(filepath.Join(dir, opts.file))
	if err != nil {
		return err
	}
	screen := console.NewScreen(stdout, !opts.noColor)
	for _, w := range pl.Warnings {
		screen.Printf("%s\n", screen.Color(33, "warning: "+w.String()))
	}
	selected, err := selectJobs(pl, jobNames)
	if err != nil {
		return err
	}

	// First SIGINT/SIGTERM: stop the jobs gracefully (after_script runs).
	// Second: abort them. Either way the environments are cleaned up.
	abortCtx, abort := context.WithCancel(ctx)
	defer abort()
	cancelJobs := make(chan struct{})
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		select {
		case s := <-sigs:
			screen.Printf("%s\n", screen.Color(33, "berth: "+s.String()+": stopping the jobs (again to abort)"))
			close(cancelJobs)
		case <-abortCtx.Done():
			return
		}
		select {
		case <-sigs:
			abort()
		case <-abortCtx.Done():
		}
	}()

	runner := &job.Runner{Executor: sup, Info: info, GracePeriod: opts.grace, Version: version, Log: log}
	e := &pipelineRun{
		runner: runner, screen: screen, dir: dir, pl: pl, selected: selected,
		concurrency: max(1, opts.concurrency), cancel: cancelJobs, runID: strconv.FormatInt(time.Now().UnixNano(), 36),
	}
	results := e.run(abortCtx)
	failed := printSummary(screen, results)
	if failed {
		return exitError{code: 1}
	}
	select {
	case <-cancelJobs:
		return exitError{code: 130}
	default:
	}
	return nil
}

func shaFromArgs(args []string) string {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--plugin-sha256="); ok {
			return v
		}
		if (a == "--plugin-sha256" || a == "-plugin-sha256") && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

// selectJobs returns the jobs to run: those named, or all of them.
func selectJobs(pl *pipeline.Pipeline, names []string) (map[string]bool, error) {
	sel := map[string]bool{}
	if len(names) == 0 {
		for _, j := range pl.Jobs {
			sel[j.Name] = true
		}
		return sel, nil
	}
	for _, n := range names {
		if pl.Job(n) == nil {
			all := make([]string, 0, len(pl.Jobs))
			for _, j := range pl.Jobs {
				all = append(all, j.Name)
			}
			return nil, fmt.Errorf("no job %q in the pipeline (jobs: %s)", n, strings.Join(all, ", "))
		}
		sel[n] = true
	}
	return sel, nil
}

// jobResult is one row of the summary.
type jobResult struct {
	name, stage string
	status      string
	duration    time.Duration
	allowed     bool
	detail      string
}

type pipelineRun struct {
	runner      *job.Runner
	screen      *console.Screen
	dir         string
	pl          *pipeline.Pipeline
	selected    map[string]bool
	concurrency int
	cancel      <-chan struct{}
	runID       string
}

func (e *pipelineRun) run(ctx context.Context) []jobResult {
	var results []jobResult
	total := len(e.selected)
	failed := false
	index := 0
	for _, stage := range e.pl.Stages {
		jobs := e.pl.JobsInStage(stage)
		var runnable []*pipeline.Job
		for _, j := range jobs {
			if !e.selected[j.Name] {
				continue
			}
			skip := ""
			switch {
			case j.When == "manual":
				skip = "manual"
			case j.When == "on_failure" && !failed:
				skip = "skipped"
			case j.When != "always" && j.When != "on_failure" && failed:
				skip = "skipped"
			case isClosed(e.cancel) || ctx.Err() != nil:
				skip = "canceled"
			}
			if skip != "" {
				results = append(results, jobResult{name: j.Name, stage: stage, status: skip})
				continue
			}
			runnable = append(runnable, j)
		}
		stageResults := make([]jobResult, len(runnable))
		sem := make(chan struct{}, e.concurrency)
		var wg sync.WaitGroup
		for i, j := range runnable {
			idx := index
			index++
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				stageResults[i] = e.runJob(ctx, j, idx, total > 1)
			})
		}
		wg.Wait()
		for _, r := range stageResults {
			if r.status != string(job.Success) && !r.allowed {
				failed = true
			}
		}
		results = append(results, stageResults...)
	}
	return results
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func (e *pipelineRun) runJob(ctx context.Context, pj *pipeline.Job, index int, prefix bool) jobResult {
	vars := append(slices.Clone(e.pl.Variables), pj.Variables...)
	vars = append([]script.Variable{
		{Key: "CI_PIPELINE_SOURCE", Value: "local", Raw: true},
		{Key: "BERTH_LOCAL", Value: "true", Raw: true},
	}, vars...)
	j := job.Job{
		ID:           fmt.Sprintf("local-%s-%d-%s", e.runID, index, sanitize(pj.Name)),
		Name:         pj.Name,
		Stage:        pj.Stage,
		Image:        pj.Image,
		BeforeScript: pj.BeforeScript,
		Script:       pj.Script,
		AfterScript:  pj.AfterScript,
		Variables:    vars,
		Timeout:      pj.Timeout,
		AllowFailure: pj.AllowFailure, AllowFailureExitCodes: pj.AllowFailureExitCodes,
		Inputs: []job.Input{{Name: "sources", Write: func(ctx context.Context, w io.Writer) error {
			return writeSources(ctx, w, e.dir)
		}}},
		Cancel: e.cancel,
	}
	out := e.screen.Job(pj.Name, index, prefix)
	res := e.runner.Run(ctx, j, out)
	out.Close()
	r := jobResult{name: pj.Name, stage: pj.Stage, status: string(res.Status), duration: res.Duration, allowed: res.AllowedToFail}
	if res.Status != job.Success && res.Err != nil {
		r.detail = res.Err.Error()
	}
	return r
}

// writeSources writes the project folder as a tar stream: the job works
// on a copy, never on the user's files.
func writeSources(ctx context.Context, w io.Writer, dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("reading the project folder: %w", err)
	}
	paths := make([]string, 0, len(entries))
	for _, e := range entries {
		paths = append(paths, e.Name())
	}
	return archive.Write(ctx, w, dir, paths)
}

func sanitize(s string) string {
	var b strings.Builder
	for _, c := range s {
		if (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' {
			b.WriteRune(c)
		} else {
			b.WriteByte('-')
		}
	}
	return b.String()
}

// printSummary prints the table of jobs and says whether a job failed
// that was not allowed to.
func printSummary(screen *console.Screen, results []jobResult) bool {
	var sb strings.Builder
	tw := tabwriter.NewWriter(&sb, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nJOB\tSTAGE\tSTATUS\tDURATION\t")
	failed := false
	for _, r := range results {
		status := r.status
		color := 0
		switch {
		case r.status == string(job.Success):
			color = 32
		case r.status == string(job.Failed) && r.allowed:
			status, color = "failed (allowed)", 33
		case r.status == string(job.Failed) || r.status == string(job.Canceled):
			color, failed = 31, true
		default:
			color = 90
		}
		dur := "-"
		if r.duration > 0 {
			dur = r.duration.Round(time.Millisecond).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.name, r.stage, screen.Color(color, status), dur, r.detail)
	}
	tw.Flush()
	screen.Printf("%s", sb.String())
	return failed
}
