// Package job runs one CI job through an executor, whatever the job's
// source (a local .gitlab-ci.yml or a GitLab instance): prepare the
// environment, upload inputs, run the script and after_script steps,
// download outputs, clean up, and write everything into the job's trace.
package job

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/berthci/berth/host/script"
	"github.com/berthci/berth/host/trace"
	"github.com/berthci/berth/sdk"
)

// Defaults GitLab users know.
const (
	DefaultTimeout            = time.Hour
	DefaultAfterScriptTimeout = 5 * time.Minute
	DefaultGracePeriod        = 10 * time.Second
	cleanupTimeout            = 5 * time.Minute
)

// ErrCanceled is the cause of a job stopped through Job.Cancel.
var ErrCanceled = errors.New("job canceled")

// Job is what the host runs.
type Job struct {
	// ID is unique per attempt: executors name resources after it.
	ID    string
	Name  string
	Stage string

	Image    sdk.Image
	Services []sdk.Service

	BeforeScript []string
	Script       []string
	AfterScript  []string
	// Variables in precedence order: later ones win.
	Variables []script.Variable

	// Timeout for the whole job (DefaultTimeout when zero).
	Timeout time.Duration
	// AllowFailure lets the job fail without failing the pipeline;
	// with AllowFailureExitCodes only for those codes.
	AllowFailure          bool
	AllowFailureExitCodes []int

	// Inputs are uploaded into the build directory before the script.
	Inputs []Input
	// Outputs are downloaded from the build directory after the steps
	// (artifacts, caches), each when its When says.
	Outputs []Output

	// Credentials are registry logins for the job's images, and
	// ExecutorVariables the job variables meant for the executor itself;
	// both are handed to the executor's Prepare.
	Credentials       []sdk.Credential
	ExecutorVariables map[string]string

	// Cancel, when closed, stops the job gracefully: the script gets
	// SIGTERM and its grace period, after_script still runs. (Cancelling
	// Run's context instead aborts: no after_script; cleanup still runs.)
	Cancel <-chan struct{}
}

// Input is a tree to put into the job's build directory.
type Input struct {
	// Dir is relative to the build directory ("" = the build directory).
	Dir string
	// Name says what it is in the trace ("sources", "artifacts of build").
	Name string
	// Write writes the tree as a tar stream.
	Write func(ctx context.Context, w io.Writer) error
	// Prepare, when set, is called in the input's trace section before
	// Write (to fetch what Write will send); what it writes to log lands in
	// the job's trace, masked. An error fails the job as Write's would.
	Prepare func(ctx context.Context, log io.Writer) error
}

// Output is a set of paths to bring back from the build directory after
// the steps.
type Output struct {
	// Name says what it is in the trace ("artifacts", "cache").
	Name string
	// Paths are relative to the build directory.
	Paths []string
	// When the output is collected.
	When OutputWhen
	// Read consumes the tar stream of the paths. An error fails a job that
	// had succeeded (a system failure): its outputs are part of its result.
	Read func(ctx context.Context, r io.Reader) error
}

// OutputWhen says after which results an Output is collected.
type OutputWhen int

// When outputs are collected, as GitLab's artifacts:when.
const (
	OnSuccess OutputWhen = iota
	OnFailure
	Always
)

func (w OutputWhen) matches(s Status) bool {
	switch w {
	case Always:
		return true
	case OnFailure:
		return s == Failed
	default:
		return s == Success
	}
}

// Status is how a job ended.
type Status string

// The statuses a job can end with.
const (
	Success  Status = "success"
	Failed   Status = "failed"
	Canceled Status = "canceled"
)

// Failure reasons as GitLab names them.
const (
	ScriptFailure = "script_failure"
	SystemFailure = "runner_system_failure"
	Timeout       = "job_execution_timeout"
)

// Result is how a job ended.
type Result struct {
	Status Status
	// ExitCode of the script, -1 when it did not run to an end.
	ExitCode int
	// FailureReason for a failed job (ScriptFailure, SystemFailure, Timeout).
	FailureReason string
	// Err explains a system failure or a cancel.
	Err error
	// AllowedToFail is set for a failed job whose failure is allowed.
	AllowedToFail bool
	Duration      time.Duration
}

// Executor is what the runner needs of an executor (plugins.Supervisor
// and sdk.Client have it).
type Executor interface {
	sdk.Executor
	sdk.BatchRunner
}

// Runner runs jobs on one executor.
type Runner struct {
	Executor Executor
	// Info is the executor's description (capabilities and shells).
	Info sdk.Info
	// GracePeriod between SIGTERM and SIGKILL when a step is stopped.
	GracePeriod time.Duration
	// AfterScriptTimeout bounds after_script (DefaultAfterScriptTimeout).
	AfterScriptTimeout time.Duration
	// OutputLimit for the trace (trace.DefaultLimit when zero).
	OutputLimit int64
	// Version is berth's version, printed at the top of the trace.
	Version string
	Log     *slog.Logger
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

func (r *Runner) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *Runner) shell() string {
	if len(r.Info.Capabilities.Shells) > 0 {
		return r.Info.Capabilities.Shells[0]
	}
	return "sh"
}

// Run runs j and writes its trace to sink. Closing j.Cancel stops the job
// gracefully (after_script runs); cancelling ctx aborts it (no
// after_script). Either way the environment is cleaned up before Run
// returns.
func (r *Runner) Run(ctx context.Context, j Job, sink io.Writer) Result {
	start := r.now()
	log := r.Log
	if log == nil {
		log = slog.Default()
	}
	log = log.With("job", j.Name, "id", j.ID)
	var secrets []string
	for _, v := range j.Variables {
		if v.Masked {
			secrets = append(secrets, v.Value)
		}
	}
	tr := trace.New(sink, trace.Options{Secrets: secrets, Limit: r.OutputLimit, Now: r.Now})
	res := r.run(ctx, j, tr, log)
	res.Duration = r.now().Sub(start)
	switch res.Status {
	case Success:
		tr.Colored("32;1", "Job succeeded")
	case Canceled:
		tr.Colored("31;1", "ERROR: Job canceled: %v", res.Err)
	default:
		msg := fmt.Sprintf("exit code %d", res.ExitCode)
		if res.FailureReason != ScriptFailure && res.Err != nil {
			msg = res.Err.Error()
		}
		if res.AllowedToFail {
			tr.Colored("33;1", "WARNING: Job failed (allowed to fail): %s", msg)
		} else {
			tr.Colored("31;1", "ERROR: Job failed: %s", msg)
		}
	}
	if err := tr.Close(); err != nil {
		log.Error("closing the trace", "error", err)
	}
	return res
}

func (r *Runner) run(abortCtx context.Context, j Job, tr *trace.Trace, log *slog.Logger) Result {
	// ctx ends on a graceful cancel or an abort; abortCtx on an abort only.
	ctx, cancel := context.WithCancelCause(abortCtx)
	defer cancel(nil)
	if j.Cancel != nil {
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			select {
			case <-j.Cancel:
				cancel(ErrCanceled)
			case <-stop:
			}
		}()
	}
	timeout := j.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
		if max := r.Info.Capabilities.MaxJobTimeout; max > 0 && max < timeout {
			timeout = max // a job that set no timeout fits the executor's limit
		}
	}
	grace := r.GracePeriod
	if grace <= 0 {
		grace = DefaultGracePeriod
	}
	afterTimeout := r.AfterScriptTimeout
	if afterTimeout <= 0 {
		afterTimeout = DefaultAfterScriptTimeout
	}
	deadline := r.now().Add(timeout)
	shell := r.shell()

	tr.Notice("Running with berth %s, executor %s %s", r.Version, r.Info.Name, r.Info.Version)

	// Prepare. An aborted or cancelled job before its script ran is cancelled.
	end := tr.Section("prepare_executor", "Preparing the \""+r.Info.Name+"\" executor")
	sjob := sdk.Job{
		ID: j.ID, Name: j.Name, Image: j.Image, Services: j.Services, Timeout: timeout, Shell: shell,
		Labels:      map[string]string{"berth.job": j.ID},
		Credentials: j.Credentials, ExecutorVariables: executorVariables(j),
	}
	for _, o := range j.Outputs {
		sjob.DownloadPaths = append(sjob.DownloadPaths, o.Paths...)
	}
	h, err := r.Executor.Prepare(ctx, sjob)
	end()
	// Cleanup always runs, on a context of its own: the job's may be done.
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		ch := h
		if ch.JobID == "" {
			ch = sdk.Handle{JobID: j.ID}
		}
		if err := r.Executor.Cleanup(cctx, ch); err != nil {
			log.Error("cleaning up the job's environment failed", "error", err)
			tr.Notice("WARNING: cleaning up the job's environment failed: %v", err)
		}
	}()
	if err != nil {
		if ctx.Err() != nil {
			return canceled(ctx)
		}
		return Result{Status: Failed, ExitCode: -1, FailureReason: SystemFailure, Err: fmt.Errorf("preparing the environment: %w", err)}
	}

	for _, in := range j.Inputs {
		if err := r.upload(ctx, h, in, tr); err != nil {
			if ctx.Err() != nil {
				return canceled(ctx)
			}
			return Result{Status: Failed, ExitCode: -1, FailureReason: SystemFailure, Err: err}
		}
	}

	vars := append([]script.Variable{
		{Key: "CI", Value: "true", Raw: true},
		{Key: "CI_PROJECT_DIR", Value: h.BuildDir, Raw: true},
		{Key: "CI_BUILDS_DIR", Value: path.Dir(h.BuildDir), Raw: true},
		{Key: "CI_JOB_NAME", Value: j.Name, Raw: true},
		{Key: "CI_JOB_STAGE", Value: j.Stage, Raw: true},
		{Key: "CI_JOB_ID", Value: j.ID, Raw: true},
	}, j.Variables...)
	tmp := strings.TrimSuffix(h.BuildDir, "/") + ".tmp"

	var steps []sdk.Step
	mainScript, err := script.Generate(shell, script.Stage{
		Name: "step_script", Commands: append(slices.Clone(j.BeforeScript), j.Script...),
		Variables: vars, BuildDir: h.BuildDir, TmpDir: tmp, Color: true,
	})
	if err != nil {
		return Result{Status: Failed, ExitCode: -1, FailureReason: SystemFailure, Err: fmt.Errorf("generating the script: %w", err)}
	}
	remaining := time.Until(deadline)
	if r.Now != nil {
		remaining = deadline.Sub(r.now())
	}
	steps = append(steps, sdk.Step{Name: "step_script", Script: mainScript, Shell: shell, GracePeriod: grace, Timeout: remaining, When: sdk.OnSuccess})
	if len(j.AfterScript) > 0 {
		after, err := script.Generate(shell, script.Stage{
			Name: "after_script", Commands: j.AfterScript,
			Variables: vars, BuildDir: h.BuildDir, TmpDir: tmp, Color: true,
		})
		if err != nil {
			return Result{Status: Failed, ExitCode: -1, FailureReason: SystemFailure, Err: fmt.Errorf("generating after_script: %w", err)}
		}
		steps = append(steps, sdk.Step{Name: "after_script", Script: after, Shell: shell, GracePeriod: grace, Timeout: afterTimeout, When: sdk.Always})
	}

	results := r.runSteps(ctx, abortCtx, h, steps, tr)
	main := results[0]
	if len(results) > 1 {
		if a := results[1]; a.Err != nil {
			tr.Notice("WARNING: after_script failed: %v", a.Err)
		} else if a.TimedOut {
			tr.Notice("WARNING: after_script timed out after %s", afterTimeout)
		} else if a.ExitCode != 0 && !a.Skipped {
			tr.Notice("WARNING: after_script exited with code %d", a.ExitCode)
		}
	}
	res := r.result(ctx, j, main, timeout)
	if res.Status == Canceled {
		return res
	}
	for _, o := range j.Outputs {
		if !o.When.matches(res.Status) {
			continue
		}
		if err := r.download(abortCtx, h, o, tr); err != nil {
			tr.Notice("ERROR: %v", err)
			if res.Status == Success {
				res = Result{Status: Failed, ExitCode: 0, FailureReason: SystemFailure, Err: err}
			}
		}
	}
	return res
}

// executorVariables are the job's variables meant for the executor itself
// (registry logins, Kubernetes overrides), added to those the job source
// set; they reach the script like every variable too.
func executorVariables(j Job) map[string]string {
	out := maps.Clone(j.ExecutorVariables)
	for _, v := range j.Variables {
		if v.Key == "DOCKER_AUTH_CONFIG" || strings.HasPrefix(v.Key, "KUBERNETES_") {
			if out == nil {
				out = map[string]string{}
			}
			out[v.Key] = v.Value
		}
	}
	return out
}

// result says how the job ended from how its main step ended.
func (r *Runner) result(ctx context.Context, j Job, main sdk.StepResult, timeout time.Duration) Result {
	var res Result
	switch {
	case main.Canceled || (ctx.Err() != nil && main.ExitCode != 0):
		return canceled(ctx)
	case main.TimedOut:
		res = Result{Status: Failed, ExitCode: -1, FailureReason: Timeout, Err: fmt.Errorf("execution took longer than %s", timeout)}
	case main.Err != nil:
		res = Result{Status: Failed, ExitCode: -1, FailureReason: SystemFailure, Err: main.Err}
	case main.ExitCode != 0:
		res = Result{Status: Failed, ExitCode: main.ExitCode, FailureReason: ScriptFailure, Err: fmt.Errorf("exit code %d", main.ExitCode)}
	default:
		return Result{Status: Success, ExitCode: 0}
	}
	// allow_failure: true covers every failure; with exit_codes, only a
	// script's exit with one of them (as GitLab has it).
	res.AllowedToFail = j.AllowFailure && (len(j.AllowFailureExitCodes) == 0 ||
		res.FailureReason == ScriptFailure && slices.Contains(j.AllowFailureExitCodes, res.ExitCode))
	return res
}

// download brings one output back and hands it to its reader.
func (r *Runner) download(ctx context.Context, h sdk.Handle, o Output, tr *trace.Trace) error {
	end := tr.Section("download_"+sectionName(o.Name), "Collecting "+o.Name)
	defer end()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := o.Read(ctx, pr)
		pr.CloseWithError(errors.New("the reader of the download stopped"))
		done <- err
	}()
	err := r.Executor.Download(ctx, h, o.Paths, pw)
	pw.CloseWithError(err)
	if rerr := <-done; rerr != nil {
		err = rerr // the reader's own error is the cause; the writer saw it stop
	}
	if err != nil {
		return fmt.Errorf("collecting %s: %w", o.Name, err)
	}
	return nil
}

func canceled(ctx context.Context) Result {
	cause := context.Cause(ctx)
	if cause == nil {
		cause = context.Canceled
	}
	return Result{Status: Canceled, ExitCode: -1, Err: cause}
}

// runSteps runs the steps: all at once for a one-shot executor, one call
// per step otherwise (so the after_script survives a graceful cancel of the
// script). Either way the output lands in the trace under each step's
// section.
func (r *Runner) runSteps(ctx, abortCtx context.Context, h sdk.Handle, steps []sdk.Step, tr *trace.Trace) []sdk.StepResult {
	// Each step's stdout and stderr are masked apart before they meet in
	// the trace (see trace.Stream).
	var streams []io.Closer
	defer func() {
		for _, s := range streams {
			s.Close()
		}
	}()
	outputs := make([]sdk.Output, len(steps))
	for i := range steps {
		o, e := tr.Stream(), tr.Stream()
		streams = append(streams, o, e)
		outputs[i] = sdk.Output{Stdout: o, Stderr: e}
	}
	out := func(i int) sdk.Output { return outputs[i] }
	if r.Info.Capabilities.OneShot {
		end := tr.Section("step_batch", "Running "+stepNames(steps))
		defer end()
		// A one-shot executor gets the whole batch: a graceful cancel stops
		// the running step and the plugin still runs the Always steps.
		res, err := r.Executor.RunSteps(ctx, h, steps, out)
		if err != nil {
			res = make([]sdk.StepResult, len(steps))
			for i := range res {
				res[i] = sdk.StepResult{ExitCode: -1, Err: err}
			}
		}
		return res
	}
	results := make([]sdk.StepResult, len(steps))
	failed := false
	for i, st := range steps {
		stepCtx := ctx
		if st.When == sdk.Always {
			stepCtx = abortCtx // after_script runs after a graceful cancel too
		}
		if (failed || ctx.Err() != nil) && st.When != sdk.Always || abortCtx.Err() != nil {
			results[i] = sdk.StepResult{Skipped: true, Canceled: ctx.Err() != nil}
			continue
		}
		end := tr.Section(st.Name, sectionHeader(st.Name))
		res, err := r.Executor.RunSteps(stepCtx, h, []sdk.Step{st}, func(int) sdk.Output { return outputs[i] })
		outputs[i].Stdout.(io.Closer).Close()
		outputs[i].Stderr.(io.Closer).Close()
		end()
		if err != nil {
			results[i] = sdk.StepResult{ExitCode: -1, Err: err}
		} else {
			results[i] = res[0]
		}
		r := results[i]
		failed = failed || r.Err != nil || r.ExitCode != 0 || r.Canceled || r.TimedOut
	}
	return results
}

func sectionHeader(step string) string {
	switch step {
	case "step_script":
		return "Executing \"step_script\" stage of the job script"
	case "after_script":
		return "Running after_script"
	}
	return "Running " + step
}

func stepNames(steps []sdk.Step) string {
	names := make([]string, len(steps))
	for i, s := range steps {
		names[i] = s.Name
	}
	return strings.Join(names, ", ")
}

func (r *Runner) upload(ctx context.Context, h sdk.Handle, in Input, tr *trace.Trace) error {
	end := tr.Section("upload_"+sectionName(in.Name), "Uploading "+in.Name)
	defer end()
	if in.Prepare != nil {
		log := tr.Stream()
		err := in.Prepare(ctx, log)
		log.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", in.Name, err)
		}
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(in.Write(ctx, pw)) }()
	err := r.Executor.Upload(ctx, h, in.Dir, pr)
	pr.CloseWithError(errors.New("upload ended"))
	if err != nil {
		return fmt.Errorf("uploading %s: %w", in.Name, err)
	}
	return nil
}

func sectionName(s string) string {
	var b strings.Builder
	for _, c := range strings.ToLower(s) {
		if (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') {
			b.WriteRune(c)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}
