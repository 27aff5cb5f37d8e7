// Package docker is berth's docker executor: each job runs in a container
// of its own on a Docker engine, with its services next to it.
//
// For a job, Prepare makes a build volume (mounted at builds_dir), a bridge
// network when the job has services (one per job, so that each service is
// reachable by its aliases; a job without services uses the default
// bridge, as `docker run` does, which saves creating and removing a
// network), one container per service, and one long-lived job container
// from the job's image whose main process only keeps it alive. Each step
// runs in the job container with an exec, under a small POSIX sh wrapper
// (step.sh) that reads the script from the exec's stdin into a tmpfs,
// gives the step a process group of its own, kills what the step leaves
// behind when its shell exits, and lets a cancel reach every process of
// the step. Upload and Download use the engine's archive API. No helper
// image is needed, and nothing but sh has to be in the image.
//
// Every container, network and volume carries the labels berth.job,
// berth.runner and berth.expires (a unix time: the job's timeout plus a
// margin after Prepare). Cleanup removes everything labelled with the job;
// the first Configure of a plugin process also removes whatever of its
// runner is past its expiry, so that a plugin killed with SIGKILL leaks
// nothing for longer than a job timeout.
//
// Limits: a process that leaves the step's process group on purpose
// (setsid, a daemon) outlives a cancel until Cleanup; a service's ports
// are dialled from this machine, so with a remote engine only its running
// is checked; credential helpers in DOCKER_AUTH_CONFIG are not supported;
// services get neither the volumes setting nor the resource limits.
//
// The engine is reached through DOCKER_HOST (and DOCKER_TLS_VERIFY,
// DOCKER_CERT_PATH) or the host setting, with API version negotiation:
// engines with API 1.40 (Docker 19.03) and later work.
package docker

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/moby/moby/client"

	"github.com/berthci/berth/sdk"
)

// Version is the docker executor's version.
const Version = "0.1.0"

// Label keys set on everything the executor creates.
const (
	LabelJob     = "berth.job"
	LabelRunner  = "berth.runner"
	LabelExpires = "berth.expires"
	// LabelRole says what a resource is to its job: build, job,
	// service, network.
	LabelRole = "berth.role"
)

// Executor is the docker executor. Its methods are safe for concurrent use.
type Executor struct {
	log *slog.Logger
	now func() time.Time
	// env reads the plugin's environment (DOCKER_HOST, …).
	env func(string) string

	mu      sync.Mutex
	cfg     settings
	swept   bool
	engines map[string]*client.Client
}

// Option changes how New sets up the executor.
type Option func(*Executor)

// WithLogger makes the executor log to l instead of slog's default logger
// (the one at the time of logging, so that sdk.Serve's applies).
func WithLogger(l *slog.Logger) Option { return func(e *Executor) { e.log = l } }

// WithClock makes the executor read the time from now: it stamps
// berth.expires and decides what has expired with it.
func WithClock(now func() time.Time) Option { return func(e *Executor) { e.now = now } }

// WithEnv makes the executor read DOCKER_HOST, DOCKER_TLS_VERIFY,
// DOCKER_CERT_PATH and DOCKER_AUTH_CONFIG through getenv instead of from
// its process environment.
func WithEnv(getenv func(string) string) Option { return func(e *Executor) { e.env = getenv } }

// New returns a docker executor with default settings.
func New(opts ...Option) *Executor {
	e := &Executor{now: time.Now, env: os.Getenv, cfg: defaultSettings(), engines: map[string]*client.Client{}}
	for _, o := range opts {
		o(e)
	}
	return e
}

var _ sdk.Executor = (*Executor)(nil)

// Info implements sdk.Executor. Scripts are best written for sh: every
// image with a shell has one (busybox and alpine have no bash). A step
// written for bash runs with bash when the image has it, else with sh after
// a warning on its stderr.
func (e *Executor) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{
		Name:        "docker",
		Version:     Version,
		Description: "runs each job in a container of its own on a Docker engine, with services, pull policies and resource limits",
		Capabilities: sdk.Capabilities{
			Image:            true,
			Services:         true,
			CancelGracefully: true,
			Isolated:         true,
			Shells:           []string{"sh", "bash"},
		},
		Config: sdk.Schema(defaultSettings()),
	}, nil
}

// Configure implements sdk.Executor. Jobs already prepared keep the
// settings they were prepared with. The first Configure of an executor
// also removes the leftovers of its runner's jobs that are past their
// expiry (see the package documentation); an engine that does not answer
// then is logged, not an error: settings are checked here, the engine when
// a job needs it.
func (e *Executor) Configure(ctx context.Context, raw map[string]any) error {
	cfg, err := decodeSettings(raw, e.env)
	if err != nil {
		return fmt.Errorf("docker executor: %w", err)
	}
	e.mu.Lock()
	e.cfg = cfg
	sweep := !e.swept
	e.swept = true
	e.mu.Unlock()
	if sweep {
		if err := e.removeExpired(ctx, cfg); err != nil {
			e.logger().Warn("could not remove the leftovers of earlier jobs", "error", err)
		}
	}
	return nil
}

func (e *Executor) logger() *slog.Logger {
	if e.log != nil {
		return e.log
	}
	return slog.Default()
}

func (e *Executor) settings() settings {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cfg
}
