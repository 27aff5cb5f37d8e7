// Package runner takes jobs from GitLab and runs them: for each configured
// runner it asks GitLab for jobs (POST /jobs/request, long polling,
// check_interval, at once again when a slot frees up), acknowledges each
// job (two-phase commit), builds a host/job.Job from the payload (variables,
// sources, dependencies' artifacts, caches), runs it through the runner's
// executor, streams the trace through a disk spool, reacts to cancels, and
// reports the final state until GitLab has it. Jobs whose final state a
// previous berth could not deliver are resumed from the spool.
package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/berthci/berth/host/gitlab"
	"github.com/berthci/berth/host/job"
	"github.com/berthci/berth/host/spool"
	"github.com/berthci/berth/sdk"
)

// Defaults as gitlab-runner has them.
const (
	DefaultCheckInterval     = 3 * time.Second
	DefaultTraceInterval     = 3 * time.Second
	DefaultForceSendInterval = 30 * time.Second
	DefaultUnhealthyInterval = 60 * time.Second
)

// API is what the runner needs of GitLab; *gitlab.Client has it.
type API interface {
	RequestJob(ctx context.Context, req gitlab.JobRequest) (gitlab.JobRequestResult, error)
	UpdateJob(ctx context.Context, id int64, token string, req gitlab.UpdateJobRequest) (gitlab.UpdateResult, error)
	PatchTrace(ctx context.Context, id int64, token string, offset int64, data []byte) (gitlab.PatchResult, error)
	UploadArtifact(ctx context.Context, id int64, token string, a gitlab.ArtifactUpload, open func() (io.ReadCloser, error)) error
	DownloadArtifact(ctx context.Context, id int64, token string, w io.Writer) (int64, error)
}

// JobRunner runs one job; *job.Runner is one.
type JobRunner interface {
	Run(ctx context.Context, j job.Job, sink io.Writer) job.Result
}

// Backend is what runs the jobs of one runner: its executor's job runner
// and description.
type Backend struct {
	Jobs JobRunner
	Info sdk.Info
}

// Metrics is what the runner reports; nil reports nothing.
type Metrics interface {
	JobStarted(executor string)
	JobFinished(executor, state string, d time.Duration)
	TraceBytesSent(n int)
}

// RunnerConfig is one [[runners]] entry, as far as the loop needs it.
type RunnerConfig struct {
	Name     string
	URL      string
	Token    string
	Executor string
	// Limit of jobs at once for this runner (0: only concurrent limits).
	Limit int
	// RequestConcurrency is how many job requests may be in flight at once
	// (1 when zero).
	RequestConcurrency int
	// CacheDir holds the local caches (no caching when empty).
	CacheDir string
	// Environment holds KEY=VALUE variables added to every job.
	Environment []string
	// Scripts run in the job's step_script: pre_get_sources_script and
	// pre_build_script before the job's script, post_build_script after.
	PreGetSourcesScript string
	PreBuildScript      string
	PostBuildScript     string
	// Shell the jobs' scripts run in, for info (the executor's first).
	Shell string
}

func (rc RunnerConfig) key() string { return rc.URL + "\x00" + rc.Token }

// Settings are what a reload can change.
type Settings struct {
	// Concurrent limits the jobs of all runners at once (1 when zero).
	Concurrent int
	// CheckInterval is the wait after GitLab had no job (3 s when zero).
	CheckInterval time.Duration
	Runners       []RunnerConfig
}

// Options configure a Service.
type Options struct {
	Log      *slog.Logger
	Version  string
	Revision string
	// SystemID identifies this runner manager to GitLab.
	SystemID string
	Spool    spool.Dir
	// Client returns the API of the GitLab at a URL.
	Client func(url string) (API, error)
	// Backend returns what runs a runner's jobs, for each job (so that a
	// reload with new executor settings applies to the next job).
	Backend func(ctx context.Context, rc RunnerConfig) (Backend, error)
	// Sources fetches repositories; nil runs jobs without sources.
	Sources SourceFetcher
	Metrics Metrics
	// MaxBuilds stops taking jobs after that many (0: no limit).
	MaxBuilds int

	// TraceInterval is the first trace update interval (GitLab's
	// X-GitLab-Trace-Update-Interval replaces it).
	TraceInterval time.Duration
	// ForceSendInterval: a job update is sent when nothing was for that
	// long (so a silent job learns of a cancel).
	ForceSendInterval time.Duration
	// RetryMin and RetryMax bound the backoff of trace and state updates.
	RetryMin, RetryMax time.Duration
	// UnhealthyInterval is the wait after GitLab refused a runner's token.
	UnhealthyInterval time.Duration
	// WorkDir holds files the host keeps while a job runs (artifact
	// archives); os.TempDir() when empty.
	WorkDir string
}

// Service runs the jobs of every configured runner.
type Service struct {
	opts Options
	log  *slog.Logger

	mu       sync.Mutex
	settings Settings
	runners  map[string]*runnerState
	running  int
	reserved int // jobs taken plus requests in flight (for MaxBuilds)
	taken    int
	active   map[*activeJob]struct{}
	stopping bool
	stopCh   chan struct{}
	ctx      context.Context
	// shutdownWhy is set by CancelJobs: jobs starting later are stopped too.
	shutdownWhy string
	slots       map[string]map[int]bool

	feeders sync.WaitGroup
	jobs    sync.WaitGroup
}

// runnerState is one runner's share of the service.
type runnerState struct {
	mu         sync.Mutex
	cfg        RunnerConfig
	running    int
	lastUpdate string
	stop       chan struct{} // closed when the workers must end (reload)
	wake       chan struct{}
}

func (rs *runnerState) config() RunnerConfig {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.cfg
}

// activeJob is a job being run, as far as cancels go.
type activeJob struct {
	cancelOnce sync.Once
	cancel     chan struct{}
	abort      context.CancelCauseFunc

	mu       sync.Mutex
	shutdown string // why berth stopped the job ("" when it did not)
	byGitLab string // why GitLab stopped it
}

func (a *activeJob) cancelGracefully() { a.cancelOnce.Do(func() { close(a.cancel) }) }

func (a *activeJob) setShutdown(why string) {
	a.mu.Lock()
	if a.shutdown == "" {
		a.shutdown = why
	}
	a.mu.Unlock()
}

func (a *activeJob) shutdownReason() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.shutdown
}

func (a *activeJob) setByGitLab(why string) {
	a.mu.Lock()
	if a.byGitLab == "" {
		a.byGitLab = why
	}
	a.mu.Unlock()
}

// New returns a service with the given settings.
func New(opts Options, settings Settings) *Service {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.TraceInterval <= 0 {
		opts.TraceInterval = DefaultTraceInterval
	}
	if opts.ForceSendInterval <= 0 {
		opts.ForceSendInterval = DefaultForceSendInterval
	}
	if opts.RetryMin <= 0 {
		opts.RetryMin = time.Second
	}
	if opts.RetryMax <= 0 {
		opts.RetryMax = 15 * time.Second
	}
	if opts.UnhealthyInterval <= 0 {
		opts.UnhealthyInterval = DefaultUnhealthyInterval
	}
	return &Service{opts: opts, log: opts.Log, settings: normalize(settings), runners: map[string]*runnerState{},
		active: map[*activeJob]struct{}{}, stopCh: make(chan struct{})}
}

func normalize(s Settings) Settings {
	if s.Concurrent <= 0 {
		s.Concurrent = 1
	}
	if s.CheckInterval <= 0 {
		s.CheckInterval = DefaultCheckInterval
	}
	return s
}

// Run takes and runs jobs until Stop (it then waits for the running jobs
// and their final updates) or until ctx ends (running jobs are aborted;
// what GitLab has not got stays in the spool for the next start).
func (s *Service) Run(ctx context.Context) error {
	s.mu.Lock()
	s.ctx = ctx
	s.mu.Unlock()
	s.resumeOrphans(ctx)
	s.Apply(s.currentSettings())
	select {
	case <-ctx.Done():
	case <-s.stopCh:
	}
	s.feeders.Wait()
	s.jobs.Wait()
	return ctx.Err()
}

func (s *Service) currentSettings() Settings {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.settings
}

// Apply puts new settings in place: new runners start taking jobs, removed
// ones stop (their running jobs go on), changed ones use the new values for
// their next job. Running jobs are never touched.
func (s *Service) Apply(settings Settings) {
	settings = normalize(settings)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.settings = settings
	if s.ctx == nil || s.stopping {
		return
	}
	seen := map[string]bool{}
	for _, rc := range settings.Runners {
		k := rc.key()
		seen[k] = true
		rs, ok := s.runners[k]
		if !ok {
			rs = &runnerState{cfg: rc}
			s.runners[k] = rs
			s.startWorkers(rs, rc)
			continue
		}
		rs.mu.Lock()
		old := rs.cfg
		rs.cfg = rc
		rs.mu.Unlock()
		if max(old.RequestConcurrency, 1) != max(rc.RequestConcurrency, 1) {
			close(rs.stop)
			s.startWorkers(rs, rc)
		}
	}
	for k, rs := range s.runners {
		if !seen[k] {
			close(rs.stop)
			delete(s.runners, k)
		}
	}
	s.wakeLocked()
}

// startWorkers starts the runner's job requesters; s.mu is held.
func (s *Service) startWorkers(rs *runnerState, rc RunnerConfig) {
	n := max(rc.RequestConcurrency, 1)
	rs.stop = make(chan struct{})
	rs.wake = make(chan struct{}, n)
	for range n {
		s.feeders.Add(1)
		go func(stop chan struct{}) {
			defer s.feeders.Done()
			s.worker(s.ctx, rs, stop)
		}(rs.stop)
	}
}

// Stop stops taking jobs; Run returns once the running ones ended.
func (s *Service) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.stopping {
		s.stopping = true
		close(s.stopCh)
	}
}

// CancelJobs stops every running job gracefully (after_script runs); each
// is reported failed (runner_system_failure) with why in its trace.
func (s *Service) CancelJobs(why string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.shutdownWhy = why
	for a := range s.active {
		a.setShutdown(why)
		a.cancelGracefully()
	}
}

// Running is the number of jobs running now.
func (s *Service) Running() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.active)
}

// wakeLocked tells every runner that a slot may be free.
func (s *Service) wakeLocked() {
	for _, rs := range s.runners {
		for {
			select {
			case rs.wake <- struct{}{}:
				continue
			default:
			}
			break
		}
	}
}

// acquire takes a job slot for rs, if the limits allow.
func (s *Service) acquire(rs *runnerState, rc RunnerConfig) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return false
	}
	if s.opts.MaxBuilds > 0 && s.reserved >= s.opts.MaxBuilds {
		return false
	}
	if s.running >= s.settings.Concurrent {
		return false
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rc.Limit > 0 && rs.running >= rc.Limit {
		return false
	}
	s.running++
	s.reserved++
	rs.running++
	return true
}

// release gives a slot back; taken says whether it held a job.
func (s *Service) release(rs *runnerState, taken bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.running--
	if !taken {
		s.reserved--
	}
	rs.mu.Lock()
	rs.running--
	rs.mu.Unlock()
	s.wakeLocked()
}

// worker asks GitLab for jobs for one runner until it must stop.
func (s *Service) worker(ctx context.Context, rs *runnerState, stop <-chan struct{}) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.stopCh:
			return
		case <-stop:
			return
		default:
		}
		rc := rs.config()
		if !s.acquire(rs, rc) {
			s.wait(ctx, rs, stop, 0)
			continue
		}
		// A job request in flight is given up when the service stops
		// (SIGQUIT) or the runner is removed: GitLab hands out again a job
		// it assigned but berth never acknowledged (two-phase commit).
		reqCtx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-s.stopCh:
			case <-stop:
			case <-reqCtx.Done():
			}
			cancel()
		}()
		wait, took := s.requestOnce(reqCtx, ctx, rs, rc)
		cancel()
		if !took {
			s.release(rs, false)
			s.wait(ctx, rs, stop, wait)
		}
	}
}

// wait sleeps until d passed (never when d is 0), a slot may be free, or
// the worker must stop.
func (s *Service) wait(ctx context.Context, rs *runnerState, stop <-chan struct{}, d time.Duration) {
	var timer <-chan time.Time
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		timer = t.C
	}
	if d > 0 {
		// After "no job", only the interval (or a stop) ends the wait:
		// asking again at once is for when a job just finished.
		select {
		case <-ctx.Done():
		case <-s.stopCh:
		case <-stop:
		case <-timer:
		}
		return
	}
	select {
	case <-ctx.Done():
	case <-s.stopCh:
	case <-stop:
	case <-rs.wake:
	}
}

// requestOnce asks for one job. It says how long to wait before asking
// again and whether a job was taken (it then owns the slot).
// reqCtx bounds the request; ctx is the service's (for the job).
func (s *Service) requestOnce(reqCtx, ctx context.Context, rs *runnerState, rc RunnerConfig) (time.Duration, bool) {
	interval := s.currentSettings().CheckInterval
	api, err := s.opts.Client(rc.URL)
	if err != nil {
		s.log.Error("runner cannot reach GitLab", "runner", rc.Name, "error", err)
		return s.opts.UnhealthyInterval, false
	}
	be, err := s.opts.Backend(ctx, rc)
	if err != nil {
		s.log.Error("runner's executor is not available; not asking for jobs", "runner", rc.Name, "executor", rc.Executor, "error", err)
		return s.opts.UnhealthyInterval, false
	}
	rs.mu.Lock()
	last := rs.lastUpdate
	rs.mu.Unlock()
	req := gitlab.JobRequest{Info: s.info(rc, be.Info), Token: rc.Token, SystemID: s.opts.SystemID, LastUpdate: last}
	res, err := api.RequestJob(reqCtx, req)
	if res.LastUpdate != "" {
		rs.mu.Lock()
		rs.lastUpdate = res.LastUpdate
		rs.mu.Unlock()
	}
	var de *gitlab.DecodeError
	switch {
	case errors.As(err, &de):
		s.log.Error("GitLab handed out a job berth cannot read", "runner", rc.Name, "endpoint", "POST /api/v4/jobs/request", "error", err)
		if de.ID > 0 && de.Token != "" {
			s.take(ctx, rs, rc, be, api, nil, de)
			return 0, true
		}
		return interval, false
	case errors.Is(err, gitlab.ErrForbidden):
		s.log.Error("GitLab refused the runner's token: it was removed or reset in GitLab; run berth verify", "runner", rc.Name, "error", err)
		return s.opts.UnhealthyInterval, false
	case err != nil:
		if reqCtx.Err() == nil {
			s.log.Warn("asking GitLab for a job failed", "runner", rc.Name, "error", err)
		}
		return interval, false
	case res.Job == nil:
		s.log.Debug("no job", "runner", rc.Name, "status", res.Status)
		return interval, false
	}
	s.take(ctx, rs, rc, be, api, res.Job, nil)
	return 0, true
}

// take starts a job received from GitLab; the job owns the slot.
func (s *Service) take(ctx context.Context, rs *runnerState, rc RunnerConfig, be Backend, api API, j *gitlab.JobResponse, bad *gitlab.DecodeError) {
	s.mu.Lock()
	s.taken++
	if s.opts.MaxBuilds > 0 && s.taken >= s.opts.MaxBuilds && !s.stopping {
		s.stopping = true
		close(s.stopCh)
	}
	s.jobs.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.jobs.Done()
		defer s.release(rs, true)
		if bad != nil {
			s.failUnreadable(ctx, api, rc, be, bad)
			return
		}
		// The runner's settings as they are now: a reload during the
		// request applies to this job too.
		if cur := rs.config(); cur.key() == rc.key() {
			rc = cur
		}
		s.runJob(ctx, rc, be, api, j)
	}()
}

// info is what the runner tells GitLab about itself on a job request.
func (s *Service) info(rc RunnerConfig, ei sdk.Info) gitlab.Info {
	shell := rc.Shell
	if shell == "" && len(ei.Capabilities.Shells) > 0 {
		shell = ei.Capabilities.Shells[0]
	}
	return gitlab.Info{
		Name: "berth", Version: s.opts.Version, Revision: s.opts.Revision,
		Platform: goos, Architecture: goarch, Executor: rc.Executor, Shell: shell,
		Features: Features(ei, s.opts.Sources != nil, rc.CacheDir != ""),
	}
}

// Features are the features berth declares for an executor: only what the
// host and that executor really do.
func Features(ei sdk.Info, sources, cache bool) gitlab.Features {
	c := ei.Capabilities
	return gitlab.Features{
		Variables:               true,
		Image:                   c.Image,
		Services:                c.Services,
		Artifacts:               true,
		Cache:                   cache,
		FallbackCacheKeys:       cache,
		Shared:                  !c.Isolated,
		UploadMultipleArtifacts: true,
		UploadRawArtifacts:      true,
		Refspecs:                sources,
		Masking:                 true,
		RawVariables:            true,
		ArtifactsExclude:        true,
		TraceReset:              true,
		TraceChecksum:           true,
		TraceSize:               true,
		Cancelable:              true,
		ReturnExitCode:          true,
		ServiceVariables:        c.Services,
		ServiceMultipleAliases:  c.Services,
		CancelGracefully:        c.CancelGracefully || c.OneShot,
		TwoPhaseJobCommit:       true,
	}
}

// failUnreadable reports a job whose payload could not be used as failed,
// with the reason in its trace: no job vanishes silently.
func (s *Service) failUnreadable(ctx context.Context, api API, rc RunnerConfig, be Backend, bad *gitlab.DecodeError) {
	entry, err := s.opts.Spool.Create(spool.Meta{URL: rc.URL, JobID: bad.ID, Token: bad.Token, Runner: rc.Name})
	if err != nil {
		s.log.Error("cannot spool the trace of an unreadable job", "job", bad.ID, "error", err)
		return
	}
	info := s.info(rc, be.Info)
	if _, err := api.UpdateJob(ctx, bad.ID, bad.Token, gitlab.UpdateJobRequest{Info: info, State: gitlab.StateRunning}); err != nil {
		s.log.Warn("acknowledging an unreadable job failed", "job", bad.ID, "error", err)
	}
	fmt.Fprintf(entry, "\x1b[31;1mERROR: berth cannot run this job: %s\x1b[0;m\n", bad.Error())
	s.finishEntry(ctx, api, entry, info, spool.Final{State: "failed", FailureReason: "runner_system_failure"})
}

// finishEntry records the final state and sends the rest of the trace and
// the state; the entry is removed once GitLab has both.
func (s *Service) finishEntry(ctx context.Context, api API, entry *spool.Entry, info gitlab.Info, final spool.Final) {
	m := entry.Meta()
	log := s.log.With("job", m.JobID)
	if err := entry.SetFinal(final); err != nil {
		log.Error("saving the job's final state in the spool", "error", err)
	}
	snd := s.newSender(api, entry, info, log)
	if err := snd.finish(ctx, final); err != nil {
		log.Warn("GitLab has not got the job's final state yet; it stays in the spool for the next start", "spool", entry.Path(), "error", err)
		entry.Close()
		return
	}
	if err := entry.Remove(); err != nil {
		log.Warn("removing the spool entry", "error", err)
	}
}

func (s *Service) newSender(api API, entry *spool.Entry, info gitlab.Info, log *slog.Logger) *sender {
	m := entry.Meta()
	snd := &sender{api: api, entry: entry, id: m.JobID, token: m.Token, info: info, log: log,
		interval: s.opts.TraceInterval, force: s.opts.ForceSendInterval, minRetry: s.opts.RetryMin, maxRetry: s.opts.RetryMax,
		sent: entry.Acked()}
	if s.opts.Metrics != nil {
		snd.sentHook = s.opts.Metrics.TraceBytesSent
	}
	return snd
}

// resumeOrphans sends what earlier berth processes left in the spool.
func (s *Service) resumeOrphans(ctx context.Context) {
	entries, err := s.opts.Spool.Orphans()
	if err != nil {
		s.log.Error("reading the trace spool", "error", err)
	}
	for _, e := range entries {
		m := e.Meta()
		api, err := s.opts.Client(m.URL)
		if err != nil {
			s.log.Error("cannot resume a spooled job", "job", m.JobID, "url", m.URL, "error", err)
			e.Close()
			continue
		}
		final := spool.Final{State: "failed", FailureReason: "runner_system_failure"}
		if m.Final != nil {
			final = *m.Final
			s.log.Info("resuming a job's trace and final state left in the spool", "job", m.JobID, "state", final.State)
		} else {
			s.log.Warn("a job was running when berth stopped; reporting it failed", "job", m.JobID)
			fmt.Fprintf(e, "\n\x1b[31;1mERROR: berth stopped while this job was running; the job is failed (runner_system_failure)\x1b[0;m\n")
		}
		info := gitlab.Info{Name: "berth", Version: s.opts.Version, Revision: s.opts.Revision, Platform: goos, Architecture: goarch}
		s.jobs.Add(1)
		go func() {
			defer s.jobs.Done()
			s.finishEntry(ctx, api, e, info, final)
		}()
	}
}

// reasonFor maps a failure reason to one GitLab knows (its
// features.failure_reasons), as gitlab-runner does.
func reasonFor(reason string, known []string) string {
	if reason == "" || len(known) == 0 {
		return reason
	}
	has := func(r string) bool {
		for _, k := range known {
			if k == r {
				return true
			}
		}
		return false
	}
	if has(reason) {
		return reason
	}
	switch reason {
	case "image_pull_failure", "runner_external_dependency_failure", "runner_interrupted":
		if has("runner_system_failure") {
			return "runner_system_failure"
		}
	case "runner_configuration_error":
		if has("script_failure") {
			return "script_failure"
		}
	}
	if has("unknown_failure") {
		return "unknown_failure"
	}
	return reason
}

// shortToken is what CI_RUNNER_SHORT_TOKEN shows of a runner token.
func shortToken(token string) string {
	t := strings.TrimPrefix(token, gitlab.CreatedRunnerTokenPrefix)
	if len(t) > 8 {
		t = t[:8]
	}
	return t
}
