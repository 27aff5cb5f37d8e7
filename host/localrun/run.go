// Package localrun runs a .gitlab-ci.yml on this machine the way GitLab
// would run it for a push of the working tree: predefined variables from
// the local git repository, variables in GitLab's order of precedence,
// workflow, rules and only/except evaluated, jobs scheduled by stage and
// needs, retried, serialised by resource group, with artifacts passed
// between jobs and caches kept on disk.
//
// Jobs run through a host/job.Runner (any executor); this package knows
// nothing of terminals: it reports what happens as Events and asks its UI
// for a writer per job.
package localrun

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/berthci/berth/host/cache"
	"github.com/berthci/berth/host/dag"
	"github.com/berthci/berth/host/job"
	"github.com/berthci/berth/host/pipeline"
	"github.com/berthci/berth/host/script"
	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/sdk/archive"
)

// Statuses of a job in a local run besides job.Success, job.Failed and
// job.Canceled.
const (
	Skipped = "skipped"
	Manual  = "manual"
)

// Selection says which jobs of the pipeline to run.
type Selection struct {
	// Jobs named on the command line (a parallel job's name stands for all
	// its instances); empty means all.
	Jobs []string
	// Needs adds what the named jobs need, transitively.
	Needs bool
	// Stages keeps only the jobs of these stages.
	Stages []string
	// Manual jobs to run as if started by hand (named jobs are too).
	Manual []string
}

// Config is what a plan is made from.
type Config struct {
	Pipeline *pipeline.Pipeline
	Project  *Project
	// Predefined variables (see Predefined).
	Predefined []script.Variable
	// ProjectVariables stand for the project's CI/CD settings (an env
	// file); PipelineVariables for variables given to a run (--var). Both
	// win over the file's variables, the latter over the former.
	ProjectVariables  []script.Variable
	PipelineVariables []script.Variable
	Selection         Selection
}

// PlannedJob is a job of the pipeline and what this run makes of it.
type PlannedJob struct {
	Job      *pipeline.Job
	Decision Decision
	// Values are the job's variables' values (rule variables included).
	Values map[string]string
	// Deps are the jobs (indexes in Plan.Jobs) it waits for; NeedsBased
	// says they come from needs: rather than stages.
	Deps       []int
	NeedsBased bool
	// ArtifactsFrom are the jobs whose artifacts it gets.
	ArtifactsFrom []int
	// Selected jobs run; Manual ones run although when: manual.
	Selected bool
	Manual   bool

	vars []script.Variable // in precedence order, up to the rule's
	over []script.Variable // the project's and the run's variables
}

// Plan is a pipeline as this run sees it.
type Plan struct {
	// Jobs in the pipeline, in stage order then file order.
	Jobs []*PlannedJob
	// Excluded are the jobs rules or only/except leave out.
	Excluded []*PlannedJob
	Stages   []string
	// Runs is false when workflow:rules keep the pipeline from being made.
	Runs     bool
	Reason   string
	Warnings []string
	Project  *Project
	Pipeline *pipeline.Pipeline
}

// NewPlan evaluates workflow, rules and only/except for every job and
// works out needs, dependencies and the selection.
func NewPlan(ctx context.Context, cfg Config) (*Plan, error) {
	p := cfg.Pipeline
	plan := &Plan{Stages: p.Stages, Runs: true, Project: cfg.Project, Pipeline: p}
	over := append(slices.Clone(cfg.ProjectVariables), cfg.PipelineVariables...)
	global := append(append(slices.Clone(cfg.Predefined), p.Variables...), over...)
	runs, wfVars, why, err := Workflow(ctx, cfg.Project, p.Workflow, Values(global))
	if err != nil {
		return nil, err
	}
	plan.Runs, plan.Reason = runs, why
	if p.Workflow != nil && p.Workflow.Name != "" {
		wfVars = append(slices.Clone(wfVars), script.Variable{Key: "CI_PIPELINE_NAME", Value: p.Workflow.Name})
	}
	jobs := slices.Clone(p.Jobs)
	slices.SortStableFunc(jobs, func(a, b *pipeline.Job) int {
		return slices.Index(p.Stages, a.Stage) - slices.Index(p.Stages, b.Stage)
	})
	for _, j := range jobs {
		base := append(slices.Clone(cfg.Predefined),
			raw("CI_JOB_NAME", j.Name), raw("CI_JOB_NAME_SLUG", Slug(j.Name)), raw("CI_JOB_STAGE", j.Stage))
		base = append(base, j.GlobalVariables...)
		base = append(base, wfVars...)
		base = append(base, j.Variables...)
		values := Values(append(slices.Clone(base), over...))
		d, err := Decide(ctx, cfg.Project, j, values)
		if err != nil {
			return nil, err
		}
		vars := append(slices.Clone(base), d.Variables...)
		pj := &PlannedJob{Job: j, Decision: d, Values: Values(append(slices.Clone(vars), over...)), vars: vars, over: over}
		if d.When == "never" {
			plan.Excluded = append(plan.Excluded, pj)
			continue
		}
		plan.Jobs = append(plan.Jobs, pj)
	}
	if err := plan.link(); err != nil {
		return nil, err
	}
	if err := plan.selectJobs(cfg.Selection); err != nil {
		return nil, err
	}
	return plan, nil
}

// link works out each job's Deps and ArtifactsFrom.
func (plan *Plan) link() error {
	idx := jobIndex(plan.Jobs)
	excluded := jobIndex(plan.Excluded)
	stage := func(i int) int { return slices.Index(plan.Stages, plan.Jobs[i].Job.Stage) }
	var earlier = func(i int) []int {
		var out []int
		for k := range plan.Jobs {
			if stage(k) < stage(i) {
				out = append(out, k)
			}
		}
		return out
	}
	// instances returns the planned jobs a need stands for.
	instances := func(n pipeline.Need) []int {
		var out []int
		for _, k := range idx[n.Job] {
			j := plan.Jobs[k].Job
			if len(n.Matrix) == 0 || slices.ContainsFunc(n.Matrix, func(f map[string]string) bool {
				for key, v := range f {
					if j.Matrix[key] != v {
						return false
					}
				}
				return true
			}) {
				out = append(out, k)
			}
		}
		return out
	}
	for i, pj := range plan.Jobs {
		j := pj.Job
		var arts []int
		if j.HasNeeds {
			pj.NeedsBased = true
			for _, n := range j.Needs {
				found := instances(n)
				if len(found) == 0 {
					if n.Optional {
						continue
					}
					why := "it is not defined"
					if ks := excluded[n.Job]; len(ks) > 0 {
						why = "it is not in this pipeline: " + plan.Excluded[ks[0]].Decision.Reason
					}
					return fmt.Errorf("%s:%d: job %q needs %q, but %s", n.File, n.Line, j.Name, n.Job, why)
				}
				pj.Deps = append(pj.Deps, found...)
				if n.Artifacts {
					arts = append(arts, found...)
				}
			}
		} else {
			pj.Deps = earlier(i)
			arts = pj.Deps
		}
		if j.HasDependencies {
			arts = nil
			for _, d := range j.Dependencies {
				arts = append(arts, idx[d]...)
			}
		}
		slices.Sort(pj.Deps)
		pj.Deps = slices.Compact(pj.Deps)
		slices.Sort(arts)
		pj.ArtifactsFrom = slices.Compact(arts)
	}
	tasks := make([]dag.Task, len(plan.Jobs))
	for i, pj := range plan.Jobs {
		tasks[i].Deps = pj.Deps
	}
	if err := dag.Check(tasks); err != nil {
		return fmt.Errorf("the needs of the pipeline make a cycle: %w", err)
	}
	return nil
}

// selectJobs marks the jobs to run.
func (plan *Plan) selectJobs(sel Selection) error {
	idx := jobIndex(plan.Jobs)
	excluded := jobIndex(plan.Excluded)
	for _, m := range sel.Manual {
		ks, ok := idx[m]
		if !ok {
			return plan.unknown(m, excluded, "--manual")
		}
		for _, k := range ks {
			plan.Jobs[k].Manual = true
		}
	}
	for _, s := range sel.Stages {
		if !slices.Contains(plan.Stages, s) {
			return fmt.Errorf("--stage %s: there is no such stage (stages: %s)", s, strings.Join(plan.Stages, ", "))
		}
	}
	if len(sel.Jobs) == 0 {
		for _, pj := range plan.Jobs {
			pj.Selected = len(sel.Stages) == 0 || slices.Contains(sel.Stages, pj.Job.Stage)
		}
		return nil
	}
	var queue []int
	for _, name := range sel.Jobs {
		ks, ok := idx[name]
		if !ok {
			return plan.unknown(name, excluded, "")
		}
		for _, k := range ks {
			if len(sel.Stages) > 0 && !slices.Contains(sel.Stages, plan.Jobs[k].Job.Stage) {
				continue
			}
			plan.Jobs[k].Selected = true
			plan.Jobs[k].Manual = true // naming a job starts it
			queue = append(queue, k)
		}
	}
	for sel.Needs && len(queue) > 0 {
		k := queue[0]
		queue = queue[1:]
		for _, d := range slices.Concat(plan.Jobs[k].Deps, plan.Jobs[k].ArtifactsFrom) {
			if !plan.Jobs[d].Selected {
				plan.Jobs[d].Selected = true
				queue = append(queue, d)
			}
		}
	}
	for _, pj := range plan.Jobs {
		if !pj.Selected {
			continue
		}
		for _, a := range pj.ArtifactsFrom {
			if from := plan.Jobs[a]; !from.Selected && from.Job.Artifacts != nil {
				plan.Warnings = append(plan.Warnings, fmt.Sprintf("job %q gets no artifacts from %q, which is not part of this run (add --needs to run it too)", pj.Job.Name, from.Job.Name))
			}
		}
	}
	return nil
}

func (plan *Plan) unknown(name string, excluded map[string][]int, flag string) error {
	if flag != "" {
		flag += " "
	}
	if ks, ok := excluded[name]; ok {
		return fmt.Errorf("%sjob %q is not in this pipeline: %s", flag, name, plan.Excluded[ks[0]].Decision.Reason)
	}
	var names []string
	for _, pj := range plan.Jobs {
		if !slices.Contains(names, pj.Job.Base) {
			names = append(names, pj.Job.Base)
		}
	}
	return fmt.Errorf("%sno job %q in the pipeline (jobs: %s)", flag, name, strings.Join(names, ", "))
}

// JobRunner runs one job (host/job.Runner has it).
type JobRunner interface {
	Run(ctx context.Context, j job.Job, sink io.Writer) job.Result
}

// Event is something that happened in a run.
type Event struct {
	Time time.Time
	// Type is job_started, job_finished, job_skipped, job_retry,
	// job_notice or pipeline_finished.
	Type   string
	Job    string
	Stage  string
	Status string
	// FailureReason is GitLab's name for why a job failed.
	FailureReason string
	Attempt       int
	// AllowFailure says the job may fail; AllowedFailure that it failed
	// and was allowed to.
	AllowFailure   bool
	AllowedFailure bool
	Duration       time.Duration
	ExitCode       int
	Coverage       string
	Detail         string
}

// UI is where a run reports.
type UI interface {
	Event(Event)
	// JobOutput returns the writer for one attempt of a job's trace; index
	// is the job's place in the plan.
	JobOutput(job string, index int) io.WriteCloser
}

// Options are how a plan runs.
type Options struct {
	Runner JobRunner
	// Executor describes the executor (its capabilities).
	Executor    sdk.Info
	Concurrency int
	// InPlace runs the jobs in the project folder itself (executors that
	// run on this machine only) instead of on a copy of it.
	InPlace bool
	// CacheDir holds the caches between runs; ArtifactsDir the artifacts
	// of this run (a temporary folder when empty, removed at the end).
	CacheDir     string
	ArtifactsDir string
	// Cancel, when closed, stops the run gracefully.
	Cancel <-chan struct{}
	UI     UI
	Log    *slog.Logger
	// RunID names this run's job IDs.
	RunID string
}

// Result is how a job ended in a run.
type Result struct {
	Name, Stage string
	// Status is success, failed, canceled, skipped or manual.
	Status string
	// AllowFailure says the job may fail; AllowedFailure that it did.
	AllowFailure          bool
	AllowFailureExitCodes []int
	AllowedFailure        bool
	Duration              time.Duration
	Attempts              int
	ExitCode              int
	Coverage              string
	Detail                string

	artifacts string // the archive of the job's artifacts, if any
	dotenv    []script.Variable
}

// Failed says whether the result fails the pipeline.
func (r Result) Failed() bool {
	return (r.Status == string(job.Failed) && !r.AllowedFailure) || r.Status == string(job.Canceled)
}

type run struct {
	plan    *Plan
	opts    Options
	sel     []int // plan indexes of the selected jobs
	store   cache.Store
	artDir  string
	tracked map[string]bool
	sources []string

	mu      sync.Mutex
	results map[int]*Result
	attempt int
}

// Run runs the selected jobs of the plan and returns their results in
// plan order.
func (plan *Plan) Run(ctx context.Context, opts Options) ([]Result, error) {
	r := &run{plan: plan, opts: opts, results: map[int]*Result{}, store: cache.Store{Dir: opts.CacheDir}}
	if opts.Log == nil {
		r.opts.Log = slog.Default()
	}
	if opts.InPlace && (opts.Executor.Capabilities.Image || opts.Executor.Capabilities.Isolated) {
		return nil, fmt.Errorf("--in-place needs an executor that runs jobs on this machine, not %q", opts.Executor.Name)
	}
	r.artDir = opts.ArtifactsDir
	if r.artDir == "" {
		dir, err := os.MkdirTemp("", "berth-artifacts-")
		if err != nil {
			return nil, fmt.Errorf("making a folder for artifacts: %w", err)
		}
		defer os.RemoveAll(dir)
		r.artDir = dir
	} else if err := os.MkdirAll(r.artDir, 0o755); err != nil {
		return nil, fmt.Errorf("making the artifacts folder: %w", err)
	}
	if err := r.readProject(ctx); err != nil {
		return nil, err
	}
	for i, pj := range plan.Jobs {
		if pj.Selected {
			r.sel = append(r.sel, i)
		}
	}
	pos := map[int]int{}
	for k, i := range r.sel {
		pos[i] = k
	}
	tasks := make([]dag.Task, len(r.sel))
	for k, i := range r.sel {
		pj := plan.Jobs[i]
		for _, d := range pj.Deps {
			if kd, ok := pos[d]; ok {
				tasks[k].Deps = append(tasks[k].Deps, kd)
			}
		}
		if g := pj.Job.ResourceGroup; g != "" {
			tasks[k].Group = ExpandWith(g, pj.Values)
		}
	}
	err := dag.Run(ctx, tasks, opts.Concurrency, func(ctx context.Context, k int) {
		i := r.sel[k]
		res := r.runJob(ctx, i)
		r.mu.Lock()
		r.results[i] = &res
		r.mu.Unlock()
	})
	if err != nil {
		return nil, err
	}
	out := make([]Result, 0, len(r.sel))
	for _, i := range r.sel {
		out = append(out, *r.results[i])
	}
	return out, nil
}

// readProject lists the sources and the files git tracks.
func (r *run) readProject(ctx context.Context) error {
	proj := r.plan.Project
	r.tracked = map[string]bool{}
	if proj.Git != nil {
		var err error
		if r.sources, err = proj.Git.Sources(ctx); err != nil {
			return err
		}
		tracked, err := proj.Git.Tracked(ctx)
		if err != nil {
			return err
		}
		for _, f := range tracked {
			r.tracked[f] = true
		}
		return nil
	}
	entries, err := os.ReadDir(proj.Dir)
	if err != nil {
		return fmt.Errorf("reading the project folder: %w", err)
	}
	for _, e := range entries {
		r.sources = append(r.sources, e.Name())
	}
	for _, f := range proj.allFiles() {
		r.tracked[f] = true
	}
	return nil
}

func (r *run) event(e Event) {
	e.Time = time.Now()
	r.opts.UI.Event(e)
}

func (r *run) canceled(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	select {
	case <-r.opts.Cancel:
		return true
	default:
		return false
	}
}

func (r *run) result(i int) Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	if res, ok := r.results[i]; ok {
		return *res
	}
	return Result{Status: string(job.Success)} // not part of this run: it does not hold anything up
}

// decide says whether job i runs now, from how the jobs it waits for
// ended; it returns the status and reason of a job that does not run.
func (r *run) decide(ctx context.Context, i int) (string, string) {
	pj := r.plan.Jobs[i]
	if r.canceled(ctx) {
		return string(job.Canceled), "the run was stopped"
	}
	when := pj.Decision.When
	if when == "manual" && !pj.Manual {
		return Manual, fmt.Sprintf("manual job: start it with --manual %q", pj.Job.Name)
	}
	failed, blocked := "", ""
	for _, d := range pj.Deps {
		res := r.result(d)
		name := r.plan.Jobs[d].Job.Name
		switch {
		case res.Failed():
			if failed == "" {
				failed = name
			}
		case res.Status == Skipped || res.Status == Manual:
			blockedHere := pj.NeedsBased || (res.Status == Manual && !res.AllowFailure)
			if blockedHere && blocked == "" {
				blocked = fmt.Sprintf("%s %q did not run", map[bool]string{true: "needed job", false: "manual job"}[pj.NeedsBased], name)
			}
		}
	}
	switch when {
	case "always":
		return "", ""
	case "on_failure":
		if failed == "" {
			return Skipped, "on_failure: nothing before it failed"
		}
		return "", ""
	}
	if failed != "" {
		return Skipped, fmt.Sprintf("%q failed", failed)
	}
	if blocked != "" {
		return Skipped, blocked
	}
	return "", ""
}

func (r *run) runJob(ctx context.Context, i int) Result {
	pj := r.plan.Jobs[i]
	j := pj.Job
	res := Result{Name: j.Name, Stage: j.Stage, AllowFailure: pj.Decision.AllowFailure, AllowFailureExitCodes: j.AllowFailureExitCodes}
	if status, why := r.decide(ctx, i); status != "" {
		res.Status, res.Detail = status, why
		r.event(Event{Type: "job_skipped", Job: j.Name, Stage: j.Stage, Status: status, Detail: why, AllowFailure: res.AllowFailure})
		return res
	}
	var dotenv []script.Variable
	for _, a := range pj.ArtifactsFrom {
		dotenv = append(dotenv, r.result(a).dotenv...)
	}
	maxAttempts := 1 + j.Retry.Max
	for attempt := 1; ; attempt++ {
		res.Attempts = attempt
		r.event(Event{Type: "job_started", Job: j.Name, Stage: j.Stage, Attempt: attempt, AllowFailure: res.AllowFailure})
		jr, art, env, cov := r.attemptJob(ctx, i, dotenv)
		res.Duration += jr.Duration
		res.Status = string(jr.Status)
		res.ExitCode = jr.ExitCode
		res.AllowedFailure = jr.AllowedToFail
		res.Coverage = cov
		res.artifacts, res.dotenv = art, env
		res.Detail = ""
		if jr.Status != job.Success && jr.Err != nil {
			res.Detail = jr.Err.Error()
		}
		if jr.Status == job.Failed && attempt < maxAttempts && retryable(j.Retry, jr) && !r.canceled(ctx) {
			r.event(Event{Type: "job_retry", Job: j.Name, Stage: j.Stage, Status: res.Status, FailureReason: jr.FailureReason, Attempt: attempt, ExitCode: jr.ExitCode, Duration: jr.Duration, Detail: res.Detail})
			continue
		}
		r.event(Event{Type: "job_finished", Job: j.Name, Stage: j.Stage, Status: res.Status, FailureReason: jr.FailureReason, Attempt: attempt,
			AllowFailure: res.AllowFailure, AllowedFailure: jr.AllowedToFail, Duration: res.Duration, ExitCode: jr.ExitCode, Coverage: cov, Detail: res.Detail})
		return res
	}
}

// retryable says whether retry: asks for another attempt after res.
func retryable(rt pipeline.Retry, res job.Result) bool {
	if len(rt.ExitCodes) > 0 && !(res.FailureReason == job.ScriptFailure && slices.Contains(rt.ExitCodes, res.ExitCode)) {
		return false
	}
	if len(rt.When) == 0 || slices.Contains(rt.When, "always") {
		return true
	}
	reasons := map[string][]string{
		job.ScriptFailure: {"script_failure"},
		job.SystemFailure: {"runner_system_failure", "unknown_failure"},
		job.Timeout:       {"job_execution_timeout", "stuck_or_timeout_failure"},
	}
	return containsAny(rt.When, reasons[res.FailureReason]...)
}

// outputWhen maps artifacts:when and cache:when.
func outputWhen(w string) job.OutputWhen {
	switch w {
	case "on_failure":
		return job.OnFailure
	case "always":
		return job.Always
	}
	return job.OnSuccess
}

// attemptJob runs one attempt of job i; it returns its result, the
// archive of its artifacts (if kept), its dotenv variables and coverage.
func (r *run) attemptJob(ctx context.Context, i int, dotenv []script.Variable) (job.Result, string, []script.Variable, string) {
	pj := r.plan.Jobs[i]
	j := pj.Job
	r.mu.Lock()
	r.attempt++
	n := r.attempt
	r.mu.Unlock()
	// Reports of earlier jobs win over the file's variables, not over the
	// project's and the run's.
	vars := slices.Concat(pj.vars, dotenv, pj.over)
	values := pj.Values
	if len(dotenv) > 0 {
		values = Values(vars)
	}
	if pj.Manual && pj.Decision.When == "manual" {
		vars = append(vars, raw("CI_JOB_MANUAL", "true"))
	}
	jobVars := ForScript(vars)
	proj := r.plan.Project
	jb := job.Job{
		ID:                    fmt.Sprintf("local-%s-%d-%s", r.opts.RunID, n, sanitize(j.Name)),
		Name:                  j.Name,
		Stage:                 j.Stage,
		Image:                 expandImage(j.Image, values),
		BeforeScript:          j.BeforeScript,
		Script:                j.Script,
		AfterScript:           j.AfterScript,
		Variables:             jobVars,
		Timeout:               j.Timeout,
		AllowFailure:          pj.Decision.AllowFailure,
		AllowFailureExitCodes: j.AllowFailureExitCodes,
		Cancel:                r.opts.Cancel,
	}
	for _, s := range j.Services {
		s.Image = expandImage(s.Image, values)
		jb.Services = append(jb.Services, s)
	}
	var artifact string
	var env []script.Variable
	var envMu sync.Mutex
	if r.opts.InPlace {
		cd := "cd -- '" + strings.ReplaceAll(proj.Dir, "'", `'\''`) + "'"
		jb.BeforeScript = append([]string{cd}, jb.BeforeScript...)
		if len(jb.AfterScript) > 0 {
			jb.AfterScript = append([]string{cd}, jb.AfterScript...)
		}
		jb.Variables = append(jb.Variables, raw("CI_PROJECT_DIR", proj.Dir))
	} else {
		jb.Inputs = append(jb.Inputs, job.Input{Name: "sources", Write: func(ctx context.Context, w io.Writer) error {
			return archive.Write(ctx, w, proj.Dir, r.sources)
		}})
		r.caches(&jb, pj, values)
		for _, a := range pj.ArtifactsFrom {
			from := r.result(a)
			if from.artifacts == "" {
				continue
			}
			path := from.artifacts
			jb.Inputs = append(jb.Inputs, job.Input{Name: "artifacts of " + from.Name, Write: func(ctx context.Context, w io.Writer) error {
				f, err := os.Open(path)
				if err != nil {
					return fmt.Errorf("opening the artifacts of %s: %w", from.Name, err)
				}
				defer f.Close()
				_, err = io.Copy(w, f)
				return err
			}})
		}
		if a := j.Artifacts; a != nil && (len(a.Paths) > 0 || a.Untracked) {
			paths := expandAll(a.Paths, values)
			keep := pathMatcher(paths, expandAll(a.Exclude, values), a.Untracked, r.tracked)
			dest := filepath.Join(r.artDir, fmt.Sprintf("%d-%s.tar", n, sanitize(j.Name)))
			jb.Outputs = append(jb.Outputs, job.Output{Name: "artifacts", Paths: roots(paths, a.Untracked), When: outputWhen(a.When),
				Read: func(ctx context.Context, rd io.Reader) error {
					f, err := os.Create(dest)
					if err != nil {
						return fmt.Errorf("storing the artifacts: %w", err)
					}
					files, err := filterTar(rd, f, keep)
					if cerr := f.Close(); err == nil {
						err = cerr
					}
					if err != nil {
						return err
					}
					artifact = dest
					if files == 0 {
						r.event(Event{Type: "job_notice", Job: j.Name, Stage: j.Stage, Detail: "WARNING: no files match artifacts:paths " + strings.Join(a.Paths, ", ")})
					}
					return nil
				}})
		}
		if a := j.Artifacts; a != nil && len(a.Dotenv) > 0 {
			jb.Outputs = append(jb.Outputs, job.Output{Name: "dotenv report", Paths: expandAll(a.Dotenv, values), When: job.Always,
				Read: func(ctx context.Context, rd io.Reader) error {
					files, err := readFiles(rd, 1<<20)
					if err != nil {
						return fmt.Errorf("reading the dotenv report: %w", err)
					}
					var got []script.Variable
					for name, data := range files {
						vs, err := ParseEnvFile(name, bytes.NewReader(data))
						if err != nil {
							return fmt.Errorf("dotenv report: %w", err)
						}
						got = append(got, vs...)
					}
					envMu.Lock()
					env = got
					envMu.Unlock()
					return nil
				}})
		}
	}
	out := r.opts.UI.JobOutput(j.Name, i)
	var cov *coverageWriter
	sink := io.Writer(out)
	if j.Coverage != "" {
		cov = &coverageWriter{re: regexp.MustCompile(j.Coverage), w: out}
		sink = cov
	}
	res := r.opts.Runner.Run(ctx, jb, sink)
	coverage := ""
	if cov != nil {
		cov.flush()
		coverage = cov.value()
	}
	out.Close()
	envMu.Lock()
	defer envMu.Unlock()
	return res, artifact, env, coverage
}

// caches adds the restore inputs and save outputs of the job's caches.
func (r *run) caches(jb *job.Job, pj *PlannedJob, values map[string]string) {
	if r.opts.CacheDir == "" {
		return
	}
	j := pj.Job
	for _, c := range j.Caches {
		key := r.cacheKey(c, values)
		policy := ExpandWith(c.Policy, values)
		if policy != "push" {
			keys := []string{key}
			for _, f := range c.FallbackKeys {
				keys = append(keys, ExpandWith(f, values))
			}
			if fk := values["CACHE_FALLBACK_KEY"]; fk != "" {
				keys = append(keys, fk)
			}
			jb.Inputs = append(jb.Inputs, job.Input{Name: "cache " + key, Write: func(ctx context.Context, w io.Writer) error {
				rc, found, err := r.store.Open(keys...)
				if errors.Is(err, cache.ErrMiss) {
					r.event(Event{Type: "job_notice", Job: j.Name, Stage: j.Stage, Detail: fmt.Sprintf("no cache for key %q yet", key)})
					return emptyTar(w)
				}
				if err != nil {
					return err
				}
				defer rc.Close()
				if found != key {
					r.event(Event{Type: "job_notice", Job: j.Name, Stage: j.Stage, Detail: fmt.Sprintf("cache restored from fallback key %q", found)})
				}
				_, err = io.Copy(w, rc)
				return err
			}})
		}
		if policy != "pull" && (len(c.Paths) > 0 || c.Untracked) {
			paths := expandAll(c.Paths, values)
			keep := pathMatcher(paths, nil, c.Untracked, r.tracked)
			jb.Outputs = append(jb.Outputs, job.Output{Name: "cache " + key, Paths: roots(paths, c.Untracked), When: outputWhen(c.When),
				Read: func(ctx context.Context, rd io.Reader) error {
					return r.store.Save(ctx, key, func(ctx context.Context, w io.Writer) error {
						_, err := filterTar(rd, w, keep)
						return err
					})
				}})
		}
	}
}

// cacheKey is the cache's key: as written (variables expanded), or made
// from the contents of key:files.
func (r *run) cacheKey(c pipeline.Cache, values map[string]string) string {
	if len(c.KeyFiles) == 0 {
		k := ExpandWith(c.Key, values)
		if k == "" {
			k = "default"
		}
		return k
	}
	h := sha256.New()
	found := false
	for _, f := range c.KeyFiles {
		f = ExpandWith(f, values)
		data, err := os.ReadFile(filepath.Join(r.plan.Project.Dir, filepath.FromSlash(f)))
		if err != nil {
			continue
		}
		found = true
		fmt.Fprintf(h, "%s\x00%d\x00", f, len(data))
		h.Write(data)
	}
	key := "default"
	if found {
		key = hex.EncodeToString(h.Sum(nil))[:16]
	}
	if p := ExpandWith(c.KeyPrefix, values); p != "" {
		key = p + "-" + key
	}
	return key
}

func expandAll(list []string, values map[string]string) []string {
	out := make([]string, len(list))
	for i, s := range list {
		out[i] = ExpandWith(s, values)
	}
	return out
}

func expandImage(img sdk.Image, values map[string]string) sdk.Image {
	img.Name = ExpandWith(img.Name, values)
	return img
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

// coverageWriter passes a trace through and keeps the last line that
// matches the coverage pattern.
type coverageWriter struct {
	re      *regexp.Regexp
	w       io.Writer
	partial []byte
	last    string
}

var ansi = regexp.MustCompile(`\x1b\[[0-9;]*[A-Za-z]|section_(start|end):[0-9]+:[A-Za-z0-9_.-]+(\[[^\]]*\])?\r`)

func (c *coverageWriter) Write(p []byte) (int, error) {
	c.partial = append(c.partial, p...)
	for {
		i := bytes.IndexByte(c.partial, '\n')
		if i < 0 {
			break
		}
		c.line(c.partial[:i])
		c.partial = c.partial[i+1:]
	}
	return c.w.Write(p)
}

func (c *coverageWriter) line(l []byte) {
	clean := ansi.ReplaceAll(l, nil)
	if m := c.re.FindSubmatch(clean); m != nil {
		text := m[0]
		for k := len(m) - 1; k >= 1; k-- {
			if m[k] != nil {
				text = m[k]
				break
			}
		}
		c.last = string(text)
	}
}

func (c *coverageWriter) flush() {
	if len(c.partial) > 0 {
		c.line(c.partial)
		c.partial = nil
	}
}

var number = regexp.MustCompile(`\d+(\.\d+)?`)

// value is the coverage GitLab would record: the first number in the
// last match (its last group, when the pattern has groups).
func (c *coverageWriter) value() string {
	return number.FindString(c.last)
}
