package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/berthci/berth/host/config"
	"github.com/berthci/berth/host/gitlab"
	"github.com/berthci/berth/host/metrics"
	"github.com/berthci/berth/host/runner"
	"github.com/berthci/berth/host/sources"
	"github.com/berthci/berth/host/spool"
	"github.com/berthci/berth/sdk"
)

// hardExitDelay is how long berth waits for aborted jobs after a second
// SIGINT (or the end of shutdown_timeout) before it exits anyway.
const hardExitDelay = 2 * time.Second

// service is what berth run and run-single share: the loop, its metrics
// endpoint and the signal handling.
type service struct {
	svc *runner.Service
	log *slog.Logger
	// shutdownTimeout (ns) changes on reload.
	shutdownTimeout atomic.Int64
	listen          string
	metrics         *metrics.Metrics
	// reload receives on SIGHUP.
	reload chan struct{}
	stderr io.Writer
}

// run runs the service until it stops: SIGQUIT stops taking jobs and
// waits for the running ones; SIGTERM/SIGINT also cancel them (reported
// failed) and give up after shutdown_timeout; a second SIGTERM/SIGINT exits
// at once. SIGHUP reloads the config.
func (s *service) run(ctx context.Context) error {
	ctx, abort := context.WithCancel(ctx)
	defer abort()
	if s.listen != "" {
		ln, err := net.Listen("tcp", s.listen)
		if err != nil {
			return fmt.Errorf("listen_address %s: %w", s.listen, err)
		}
		srv := &http.Server{Handler: s.metrics.Handler(), ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		s.log.Info("metrics listening", "address", ln.Addr().String())
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGQUIT, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	forced := make(chan struct{})
	go func() {
		stopping := false
		for {
			var sig os.Signal
			select {
			case sig = <-sigs:
			case <-ctx.Done():
				return
			}
			switch sig {
			case syscall.SIGHUP:
				select {
				case s.reload <- struct{}{}:
				default:
				}
			case syscall.SIGQUIT:
				s.svc.Stop()
				s.log.Info("SIGQUIT: taking no more jobs; exiting when the running ones ended", "running", s.svc.Running())
			default:
				if stopping {
					s.log.Warn(sig.String() + " again: exiting now")
					abort()
					time.AfterFunc(hardExitDelay, func() { close(forced) })
					return
				}
				stopping = true
				timeout := time.Duration(s.shutdownTimeout.Load())
				s.log.Info(sig.String()+": canceling the running jobs; exiting within the shutdown timeout", "running", s.svc.Running(), "shutdown_timeout", timeout)
				s.svc.Stop()
				s.svc.CancelJobs("berth received " + sig.String())
				time.AfterFunc(timeout, func() {
					s.log.Warn("the shutdown timeout passed; aborting what is left (the spool keeps what GitLab has not got)")
					abort()
					time.AfterFunc(hardExitDelay, func() { close(forced) })
				})
			}
		}
	}()
	done := make(chan error, 1)
	go func() { done <- s.svc.Run(ctx) }()
	select {
	case err := <-done:
		if err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
		return nil
	case <-forced:
		return exitError{code: 1}
	}
}

// commonFlags are the flags of run and run-single.
type commonFlags struct {
	workDir   string
	pluginDir string
	spoolDir  string
	listen    string
	logLevel  string
	logFormat string
}

func (c *commonFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.workDir, "working-directory", "", "folder for berth's own files: the trace spool, git mirrors, default cache_dir (default: the current folder)")
	fs.StringVar(&c.workDir, "d", "", "short for --working-directory")
	fs.StringVar(&c.pluginDir, "plugin-dir", "", "look for executor plugins in this folder first")
	fs.StringVar(&c.spoolDir, "spool-dir", "", "where job traces wait until GitLab has them (default: <working-directory>/.berth/spool)")
	fs.StringVar(&c.listen, "listen-address", "", "serve /metrics and /healthz on this host:port")
	fs.StringVar(&c.logLevel, "log-level", "", "log level: debug, info, warn, error")
	fs.StringVar(&c.logFormat, "log-format", "", "log format: runner, text, json")
}

func (c *commonFlags) dirs() (work, spoolDir string, err error) {
	work = c.workDir
	if work == "" {
		if work, err = os.Getwd(); err != nil {
			return "", "", err
		}
	}
	if work, err = filepath.Abs(work); err != nil {
		return "", "", err
	}
	spoolDir = c.spoolDir
	if spoolDir == "" {
		spoolDir = filepath.Join(work, ".berth", "spool")
	}
	return work, spoolDir, nil
}

// newService wires the loop.
func newService(log *slog.Logger, bes *backends, work, spoolDir, systemID string, settings runner.Settings, maxBuilds int) (*runner.Service, *metrics.Metrics) {
	m := metrics.New(bes.restarts)
	cl := &clients{log: log, observe: m.Request}
	svc := runner.New(runner.Options{
		Log: log, Version: version, SystemID: systemID, Spool: spool.Dir{Path: spoolDir},
		Client: cl.api, Backend: bes.backend, Sources: &sources.Fetcher{Dir: filepath.Join(work, ".berth", "git"), Log: log},
		Metrics: m, MaxBuilds: maxBuilds, WorkDir: filepath.Join(work, ".berth", "tmp"),
	}, settings)
	return svc, m
}

// runCommand is berth run: every runner of config.toml.
func runCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("berth run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := configFlag(fs)
	var cf commonFlags
	cf.register(fs)
	fs.String("service", "", "ignored (gitlab-runner's service name)")
	fs.String("user", "", "ignored: run berth as the user the jobs should run as")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, warnings, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	level := new(slog.LevelVar)
	if err := setLevel(level, firstNonEmpty(cf.logLevel, cfg.LogLevel)); err != nil {
		return err
	}
	log, err := runnerLogger(stderr, level, firstNonEmpty(cf.logFormat, cfg.LogFormat))
	if err != nil {
		return err
	}
	for _, w := range warnings {
		log.Warn(w)
	}
	if cf.workDir == "" {
		cf.workDir = filepath.Dir(*cfgPath)
	}
	work, spoolDir, err := cf.dirs()
	if err != nil {
		return err
	}
	systemID, err := serviceSystemID(*cfgPath, work, log)
	if err != nil {
		return err
	}
	found, err := discover(cf.pluginDir, log)
	if err != nil {
		return err
	}
	bes := newBackends(found, log)
	defer bes.close()
	if err := bes.configure(ctx, cfg.Runners); err != nil {
		return err
	}
	svc, m := newService(log, bes, work, spoolDir, systemID, settingsOf(cfg, work), 0)
	s := &service{svc: svc, log: log, listen: firstNonEmpty(cf.listen, cfg.ListenAddress), metrics: m, reload: make(chan struct{}, 1), stderr: stderr}
	s.shutdownTimeout.Store(int64(cfg.ShutdownTimeoutDuration()))
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go config.Watch(watchCtx, *cfgPath, 3*time.Second, s.reload, log, func(c *config.Config) error {
		if err := bes.configure(ctx, c.Runners); err != nil {
			return err
		}
		if cf.logLevel == "" {
			_ = setLevel(level, c.LogLevel)
		}
		s.shutdownTimeout.Store(int64(c.ShutdownTimeoutDuration()))
		svc.Apply(settingsOf(c, work))
		return nil
	})
	log.Info("berth run: taking jobs", "config", *cfgPath, "runners", len(cfg.Runners), "concurrent", max(cfg.Concurrent, 1), "system_id", systemID)
	return s.run(ctx)
}

// runSingleCommand is berth run-single: one runner from flags.
func runSingleCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	executor := scanValue(args, "executor")
	if executor == "" {
		executor = "shell"
	}
	var cf commonFlags
	bootLog := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	found, err := discover(scanValue(args, "plugin-dir"), bootLog)
	if err != nil {
		return err
	}
	fs := flag.NewFlagSet("berth run-single", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var r config.Runner
	var env stringList
	var maxBuilds, concurrent int
	var checkInterval, shutdownTimeout time.Duration
	fs.StringVar(&r.URL, "url", "", "GitLab's URL")
	fs.StringVar(&r.URL, "u", "", "short for --url")
	fs.StringVar(&r.Token, "token", "", "the runner's authentication token")
	fs.StringVar(&r.Token, "t", "", "short for --token")
	fs.StringVar(&r.Name, "name", "", "the runner's name (for logs)")
	fs.StringVar(&r.Executor, "executor", "shell", "the executor that runs the jobs")
	fs.StringVar(&r.BuildsDir, "builds-dir", "", "where jobs are built (the executor's builds_dir)")
	fs.StringVar(&r.CacheDir, "cache-dir", "", "where local caches are kept (default <working-directory>/cache)")
	fs.StringVar(&r.Shell, "shell", "", "the shell of the jobs' scripts (bash, sh)")
	fs.IntVar(&r.Limit, "limit", 0, "jobs at once for this runner (0: --concurrent)")
	fs.IntVar(&r.RequestConcurrency, "request-concurrency", 1, "job requests in flight at once")
	fs.IntVar(&r.OutputLimit, "output-limit", config.DefaultOutputLimit, "trace size limit in KiB")
	fs.Var(&env, "env", "a KEY=VALUE variable for every job (repeatable)")
	fs.StringVar(&r.PreGetSourcesScript, "pre-get-sources-script", "", "commands run before the job's script (sources are fetched by the host before)")
	fs.StringVar(&r.PreBuildScript, "pre-build-script", "", "commands run before the job's script")
	fs.StringVar(&r.PostBuildScript, "post-build-script", "", "commands run after the job's script")
	fs.IntVar(&maxBuilds, "max-builds", 0, "exit after this many jobs (0: no limit)")
	fs.IntVar(&concurrent, "concurrent", 1, "jobs at once")
	fs.DurationVar(&checkInterval, "check-interval", runner.DefaultCheckInterval, "wait after GitLab had no job")
	fs.DurationVar(&shutdownTimeout, "shutdown-timeout", config.DefaultShutdownTimeout*time.Second, "how long SIGTERM waits for canceled jobs")
	cf.register(fs)
	var info sdk.Info
	var flagSettings func() map[string]any
	if p, ok := found[executor]; ok {
		pr := newProbe(ctx, p, bootLog)
		if pr.err == nil {
			info = pr.info
			flagSettings = settingFlags(fs, info)
		}
		pr.close()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	r.Environment = env
	switch {
	case r.URL == "":
		return errors.New("run-single: --url is required")
	case r.Token == "":
		return errors.New("run-single: --token is required")
	}
	if _, ok := found[r.Executor]; !ok {
		return fmt.Errorf("no executor %q", r.Executor)
	}
	if flagSettings != nil {
		r.ExecutorSettings = map[string]any{}
		for k, v := range flagSettings() {
			r.ExecutorSettings[k] = v
		}
	}
	if r.Name == "" {
		r.Name, _ = os.Hostname()
	}
	level := new(slog.LevelVar)
	if err := setLevel(level, cf.logLevel); err != nil {
		return err
	}
	log, err := runnerLogger(stderr, level, cf.logFormat)
	if err != nil {
		return err
	}
	work, spoolDir, err := cf.dirs()
	if err != nil {
		return err
	}
	systemID, err := gitlab.LoadSystemID(filepath.Join(work, gitlab.SystemIDFile))
	if err != nil {
		return err
	}
	cfg := &config.Config{Concurrent: concurrent, Runners: []config.Runner{r}}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("run-single: %w", err)
	}
	bes := newBackends(found, log)
	defer bes.close()
	if err := bes.configure(ctx, cfg.Runners); err != nil {
		return err
	}
	settings := settingsOf(cfg, work)
	settings.CheckInterval = checkInterval
	svc, m := newService(log, bes, work, spoolDir, systemID, settings, maxBuilds)
	s := &service{svc: svc, log: log, listen: cf.listen, metrics: m, reload: make(chan struct{}, 1), stderr: stderr}
	s.shutdownTimeout.Store(int64(shutdownTimeout))
	log.Info("berth run-single: taking jobs", "url", r.URL, "executor", r.Executor, "max_builds", maxBuilds, "system_id", systemID)
	return s.run(ctx)
}

func firstNonEmpty(vals ...string) string {
	for _, v := range vals {
		if strings.TrimSpace(v) != "" {
			return v
		}
	}
	return ""
}
