package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/berthci/berth/host/gitlab"
	"github.com/berthci/berth/host/job"
	"github.com/berthci/berth/host/script"
	"github.com/berthci/berth/host/spool"
	"github.com/berthci/berth/host/trace"
	"github.com/berthci/berth/sdk"
)

const (
	goos   = runtime.GOOS
	goarch = runtime.GOARCH
)

// runJob runs one job GitLab handed out, from the acknowledgement to the
// final state.
func (s *Service) runJob(ctx context.Context, rc RunnerConfig, be Backend, api API, j *gitlab.JobResponse) {
	log := s.log.With("runner", rc.Name, "job", j.ID)
	info := s.info(rc, be.Info)
	entry, err := s.opts.Spool.Create(spool.Meta{URL: rc.URL, JobID: j.ID, Token: j.Token, Runner: rc.Name})
	if err != nil {
		// Without a spool the job cannot be run safely: leave it to
		// GitLab (never acknowledged, it is handed out again).
		log.Error("cannot spool the job's trace; leaving the job to GitLab", "error", err)
		return
	}
	log.Info("job received", "name", j.JobInfo.Name, "project", j.JobInfo.ProjectFullPath)

	// Two-phase commit: the job is ours once GitLab took "running".
	ack, err := s.acknowledge(ctx, api, j, info)
	switch {
	case err != nil:
		log.Error("GitLab did not take the job's start; leaving the job to GitLab", "error", err)
		entry.Remove()
		return
	case ack.Abort || ack.NotFound:
		log.Info("GitLab took the job back before it started", "status", ack.Status, "job_status", ack.JobStatus)
		entry.Remove()
		return
	case ack.CancelRequested:
		fmt.Fprintf(entry, "\x1b[31;1mERROR: Job canceled before it started\x1b[0;m\n")
		s.finishEntry(ctx, api, entry, info, spool.Final{State: "failed", FailureReason: reasonFor("job_canceled", j.Features.FailureReasons)})
		return
	}

	aj := &activeJob{cancel: make(chan struct{})}
	jobCtx, abort := context.WithCancelCause(ctx)
	defer abort(nil)
	aj.abort = abort
	s.mu.Lock()
	s.active[aj] = struct{}{}
	if s.shutdownWhy != "" {
		aj.setShutdown(s.shutdownWhy)
		aj.cancelGracefully()
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.active, aj)
		s.mu.Unlock()
	}()

	snd := s.newSender(api, entry, info, log)
	snd.onCancel = func() {
		log.Info("GitLab asks to cancel the job; stopping it gracefully")
		aj.setByGitLab("canceled in GitLab")
		aj.cancelGracefully()
	}
	snd.onAbort = func(why string) {
		log.Info("the job is no longer this runner's; aborting it", "why", why)
		aj.setByGitLab(why)
		abort(fmt.Errorf("GitLab: %s", why))
	}
	snd.start(ctx)
	if s.opts.Metrics != nil {
		s.opts.Metrics.JobStarted(rc.Executor)
	}
	start := time.Now()

	b := &build{s: s, rc: rc, be: be, api: api, j: j, entry: entry, log: log}
	defer b.cleanup()
	var res job.Result
	bj, err := b.job(jobCtx, aj)
	if err != nil {
		b.note("31;1", "ERROR: Job failed: %v", err)
		res = job.Result{Status: job.Failed, ExitCode: -1, FailureReason: job.SystemFailure, Err: err}
	} else {
		res = be.Jobs.Run(jobCtx, bj, entry)
	}
	final := b.final(res, aj)
	if why := aj.shutdownReason(); why != "" && res.Status != job.Success {
		b.note("31;1", "ERROR: berth stopped the job: %s", why)
	}
	log.Info("job finished", "state", final.State, "reason", final.FailureReason, "exit_code", res.ExitCode, "duration", time.Since(start).Round(time.Millisecond))
	if s.opts.Metrics != nil {
		s.opts.Metrics.JobFinished(rc.Executor, final.State, time.Since(start))
	}
	if err := entry.SetFinal(final); err != nil {
		log.Error("saving the job's final state in the spool", "error", err)
	}
	if err := snd.finish(ctx, final); err != nil {
		log.Warn("GitLab has not got the job's final state yet; it stays in the spool for the next start", "spool", entry.Path(), "error", err)
		entry.Close()
		return
	}
	if err := entry.Remove(); err != nil {
		log.Warn("removing the spool entry", "error", err)
	}
}

// acknowledge sends the first PUT running (with a few retries).
func (s *Service) acknowledge(ctx context.Context, api API, j *gitlab.JobResponse, info gitlab.Info) (gitlab.UpdateResult, error) {
	var lastErr error
	for attempt := 1; attempt <= 5; attempt++ {
		r, err := api.UpdateJob(ctx, j.ID, j.Token, gitlab.UpdateJobRequest{Info: info, State: gitlab.StateRunning})
		if err == nil {
			if r.Status == 409 {
				return r, errors.New("another runner manager took the job (409)")
			}
			return r, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
		if sleepCtx(ctx, retryWait(err, attempt, s.opts.RetryMin, s.opts.RetryMax)) != nil {
			break
		}
	}
	return gitlab.UpdateResult{}, lastErr
}

// build turns one job payload into a host/job.Job and keeps what it needs
// until the job ended.
type build struct {
	s     *Service
	rc    RunnerConfig
	be    Backend
	api   API
	j     *gitlab.JobResponse
	entry *spool.Entry
	log   *slog.Logger

	vars     []script.Variable
	secrets  []string
	cleanups []func()
	// missingDependency is set when a dependency's artifacts are gone.
	missingDependency bool
	slots             []func()
}

func (b *build) cleanup() {
	for i := len(b.cleanups) - 1; i >= 0; i-- {
		b.cleanups[i]()
	}
	b.cleanups = nil
}

// note writes a line of the host's own into the trace, masked.
func (b *build) note(color, format string, args ...any) {
	m := trace.NewMasker(b.entry, b.secrets)
	fmt.Fprintf(m, "\x1b[%sm%s\x1b[0;m\n", color, fmt.Sprintf(format, args...))
	m.Close()
}

func (b *build) lookup(name string) (string, bool) {
	for i := len(b.vars) - 1; i >= 0; i-- {
		if b.vars[i].Key == name {
			return b.vars[i].Value, true
		}
	}
	return "", false
}

// expand expands $VAR references with the job's variables.
func (b *build) expand(s string) string { return script.Expand(s, b.lookup) }

// job builds the host/job.Job.
func (b *build) job(ctx context.Context, aj *activeJob) (job.Job, error) {
	j := b.j
	concurrent, project := b.s.takeSlots(b.rc, j, &b.cleanups)
	b.vars = b.variables(concurrent, project)
	for _, v := range b.vars {
		if v.Masked && v.Value != "" {
			b.secrets = append(b.secrets, v.Value)
		}
	}
	bj := job.Job{
		ID:     fmt.Sprintf("gitlab-%d-%s", j.ID, randomSuffix()),
		Name:   j.JobInfo.Name,
		Stage:  j.JobInfo.Stage,
		Cancel: aj.cancel,
	}
	if j.RunnerInfo.Timeout > 0 {
		bj.Timeout = time.Duration(j.RunnerInfo.Timeout) * time.Second
	}
	var main, after []string
	hasScript := false
	for _, st := range j.Steps {
		switch st.Name {
		case "script":
			main, hasScript = st.Script, true
		case "after_script":
			after = st.Script
		default:
			return bj, fmt.Errorf("the job has a %q step, which berth does not run", st.Name)
		}
	}
	if !hasScript {
		return bj, errors.New("the job payload has no script step")
	}
	var pre []string
	if b.rc.PreGetSourcesScript != "" {
		pre = append(pre, b.rc.PreGetSourcesScript)
	}
	for _, h := range j.Hooks {
		switch h.Name {
		case "pre_get_sources_script", "post_get_sources_script":
			pre = append(pre, h.Script...)
		default:
			return bj, fmt.Errorf("the job has a %q hook, which berth does not run", h.Name)
		}
	}
	if b.rc.PreBuildScript != "" {
		pre = append(pre, b.rc.PreBuildScript)
	}
	bj.BeforeScript = pre
	bj.Script = main
	if b.rc.PostBuildScript != "" {
		bj.Script = append(append([]string(nil), main...), b.rc.PostBuildScript)
	}
	bj.AfterScript = after
	bj.Variables = b.vars

	if j.Image != nil {
		bj.Image = sdk.Image{Name: b.expand(j.Image.Name), Entrypoint: j.Image.Entrypoint, PullPolicy: j.Image.PullPolicy}
	}
	for _, svc := range j.Services {
		vars := map[string]string{}
		for _, v := range svc.Variables {
			vars[v.Key] = v.Value
		}
		bj.Services = append(bj.Services, sdk.Service{
			Image:   sdk.Image{Name: b.expand(svc.Name), Entrypoint: svc.Entrypoint, PullPolicy: svc.PullPolicy},
			Aliases: strings.FieldsFunc(svc.Alias, func(r rune) bool { return r == ' ' || r == ',' }), Command: svc.Command, Variables: vars,
		})
	}
	for _, c := range j.Credentials {
		if strings.EqualFold(c.Type, "registry") {
			bj.Credentials = append(bj.Credentials, sdk.Credential{Registry: c.URL, Username: c.Username, Password: c.Password})
		}
	}
	// DOCKER_AUTH_CONFIG and KUBERNETES_* reach the executor through
	// job.Runner, which picks them from the job's variables.

	tree := b.sources(project)
	if tree != nil {
		bj.Inputs = append(bj.Inputs, tree.input)
	}
	tracked := func() map[string]bool {
		if tree == nil || tree.tree == nil {
			return nil
		}
		return tree.tree.Tracked()
	}
	for _, c := range j.Cache {
		in, out := b.cacheIO(c, tracked)
		if in != nil {
			bj.Inputs = append(bj.Inputs, *in)
		}
		if out != nil {
			bj.Outputs = append(bj.Outputs, *out)
		}
	}
	for _, d := range j.Dependencies {
		if d.ArtifactsFile == nil || d.ArtifactsFile.Filename == "" {
			continue
		}
		bj.Inputs = append(bj.Inputs, b.dependency(d))
	}
	for _, a := range j.Artifacts {
		if out := b.artifact(a, tracked); out != nil {
			bj.Outputs = append(bj.Outputs, *out)
		}
	}
	return bj, nil
}

// final says what to report to GitLab for the job's result.
func (b *build) final(res job.Result, aj *activeJob) spool.Final {
	known := b.j.Features.FailureReasons
	aj.mu.Lock()
	shutdown, byGitLab := aj.shutdown, aj.byGitLab
	aj.mu.Unlock()
	switch res.Status {
	case job.Success:
		return spool.Final{State: "success"}
	case job.Canceled:
		if shutdown != "" && byGitLab == "" {
			return spool.Final{State: "failed", FailureReason: reasonFor(job.SystemFailure, known)}
		}
		if byGitLab == "" {
			// Aborted from outside (berth's context ended).
			return spool.Final{State: "failed", FailureReason: reasonFor(job.SystemFailure, known)}
		}
		return spool.Final{State: "failed", FailureReason: reasonFor("job_canceled", known)}
	}
	reason := res.FailureReason
	if reason == "" {
		reason = "unknown_failure"
	}
	if b.missingDependency && reason == job.SystemFailure {
		reason = "missing_dependency_failure"
	}
	f := spool.Final{State: "failed", FailureReason: reasonFor(reason, known)}
	if reason == job.ScriptFailure {
		f.ExitCode = res.ExitCode
	}
	return f
}

// variables are the runner's predefined variables, the runner's
// environment, then GitLab's (later ones win).
func (b *build) variables(concurrent, project int) []script.Variable {
	j, rc := b.j, b.rc
	var vars []script.Variable
	add := func(k, v string) { vars = append(vars, script.Variable{Key: k, Value: v, Raw: true}) }
	add("CI_SERVER", "yes")
	add("CI_RUNNER_VERSION", b.s.opts.Version)
	add("CI_RUNNER_REVISION", b.s.opts.Revision)
	add("CI_RUNNER_EXECUTABLE_ARCH", goos+"/"+goarch)
	add("CI_RUNNER_SHORT_TOKEN", shortToken(rc.Token))
	add("CI_CONCURRENT_ID", strconv.Itoa(concurrent))
	add("CI_CONCURRENT_PROJECT_ID", strconv.Itoa(project))
	if b.be.Info.Capabilities.Isolated {
		add("CI_DISPOSABLE_ENVIRONMENT", "true")
	} else {
		add("CI_SHARED_ENVIRONMENT", "true")
	}
	sent := map[string]bool{}
	for _, v := range j.Variables {
		sent[v.Key] = true
	}
	if !sent["CI_SERVER_URL"] {
		add("CI_SERVER_URL", rc.URL)
		if u, err := url.Parse(rc.URL); err == nil {
			add("CI_SERVER_HOST", u.Hostname())
			add("CI_SERVER_PROTOCOL", u.Scheme)
		}
		add("CI_API_V4_URL", strings.TrimRight(rc.URL, "/")+"/api/v4")
	}
	for _, kv := range rc.Environment {
		k, v, ok := strings.Cut(kv, "=")
		if ok && k != "" {
			vars = append(vars, script.Variable{Key: k, Value: v})
		}
	}
	for _, v := range j.Variables {
		vars = append(vars, script.Variable{Key: v.Key, Value: v.Value, File: v.File, Raw: v.Raw,
			Masked: v.Masked || v.Key == "CI_JOB_TOKEN" || (j.Token != "" && v.Value == j.Token)})
	}
	if !sent["CI_JOB_TOKEN"] {
		vars = append(vars, script.Variable{Key: "CI_JOB_TOKEN", Value: j.Token, Masked: true, Raw: true})
	}
	return vars
}

// takeSlots gives the job the lowest free concurrency slot of its runner
// and of its project (CI_CONCURRENT_ID, CI_CONCURRENT_PROJECT_ID; the
// project slot also picks the host's work tree).
func (s *Service) takeSlots(rc RunnerConfig, j *gitlab.JobResponse, cleanups *[]func()) (int, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.slots == nil {
		s.slots = map[string]map[int]bool{}
	}
	take := func(k string) int {
		used := s.slots[k]
		if used == nil {
			used = map[int]bool{}
			s.slots[k] = used
		}
		n := 0
		for used[n] {
			n++
		}
		used[n] = true
		*cleanups = append(*cleanups, func() {
			s.mu.Lock()
			delete(used, n)
			s.mu.Unlock()
		})
		return n
	}
	project := j.JobInfo.ProjectFullPath
	if project == "" {
		project = strconv.FormatInt(j.JobInfo.ProjectID, 10)
	}
	return take(rc.key()), take(rc.key() + "\x00" + project)
}
