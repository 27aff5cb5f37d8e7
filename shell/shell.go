// Package shell is berth's shell executor: it runs each step's script with
// bash or sh as a process on the machine berth runs on, in a build
// directory of its own per job.
//
// It isolates nothing: a job sees the machine's files, processes and
// network with the rights of the user berth runs as. What it does keep
// apart is the environment (only allow-listed variables of the plugin's own
// environment reach a script; job variables come inside the script) and
// the processes of each step: every step runs in a process group of its
// own, which is killed when the step ends, so a background process cannot
// keep a job hanging (gitlab-runner issue 2880). A process that leaves the
// group on purpose (setsid, a double-forking daemon) escapes this; the
// step then stops reading its output shortly after the shell exits.
//
// Exit codes: a script's exit status is the step's exit code; a shell
// killed by a signal reports 128 + the signal number (137 for SIGKILL, 143
// for SIGTERM), as shells do for their children. When how the shell ended
// is unknown, Run returns an error, never a made-up code.
//
// Steps run on Linux only (process groups, parent-death signal, /proc);
// elsewhere Run returns an error.
package shell

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"

	"github.com/berthci/berth/sdk"
)

// JobMarker is set in the environment of every process a step starts, to
// the job's ID. Scripts may read it; it is how Cleanup finds a job's
// processes that outlived a crashed plugin (the shell dies with the plugin,
// its children do not). Unlike a stored process ID, it cannot point at an
// unrelated process that reused the number.
const JobMarker = "BERTH_JOB_ID"

// Version is the shell executor's version.
const Version = "0.1.0"

// settings are the executor's settings ([runners.shell] in config.toml).
type settings struct {
	BuildsDir     string   `mapstructure:"builds_dir" help:"directory holding a build directory per job (absolute)"`
	Shell         string   `mapstructure:"shell" help:"shell for steps that do not name one: bash or sh (empty: bash if installed, else sh)"`
	KeepBuildsDir bool     `mapstructure:"keep_builds_dir" help:"keep a job's build directory after the job (for debugging)"`
	EnvAllowlist  []string `mapstructure:"env_allowlist" help:"variables of berth's own environment passed to scripts; NAME or PREFIX* (job variables are always passed)"`
}

func defaultSettings() settings {
	return settings{
		BuildsDir: filepath.Join(os.TempDir(), "berth-builds"),
		EnvAllowlist: []string{
			"PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SHELL", "TERM",
		},
	}
}

// Executor is the shell executor. Its methods are safe for concurrent use.
type Executor struct {
	log     *slog.Logger
	environ func() []string

	mu  sync.Mutex
	cfg settings
	// groups are the process groups of the steps running, by job ID.
	groups map[string]map[int]struct{}
}

// Option changes how New sets up the executor.
type Option func(*Executor)

// WithLogger makes the executor log to l instead of slog's default logger
// (the one at the time of logging, so that sdk.Serve's applies).
func WithLogger(l *slog.Logger) Option { return func(e *Executor) { e.log = l } }

// WithEnviron makes the executor pick allow-listed variables from what
// environ returns instead of from its own process environment.
func WithEnviron(environ func() []string) Option { return func(e *Executor) { e.environ = environ } }

// New returns a shell executor with default settings.
func New(opts ...Option) *Executor {
	e := &Executor{environ: os.Environ, cfg: defaultSettings(), groups: map[string]map[int]struct{}{}}
	for _, o := range opts {
		o(e)
	}
	return e
}

var _ sdk.Executor = (*Executor)(nil)

// Info implements sdk.Executor.
func (e *Executor) Info(context.Context) (sdk.Info, error) {
	var shells []string
	for _, s := range []string{"bash", "sh"} {
		if _, err := exec.LookPath(s); err == nil {
			shells = append(shells, s)
		}
	}
	return sdk.Info{
		Name:        "shell",
		Version:     Version,
		Description: "runs scripts with bash or sh on this machine, one build directory per job, no isolation",
		Capabilities: sdk.Capabilities{
			CancelGracefully: true,
			Shells:           shells,
		},
		Config: sdk.Schema(defaultSettings()),
	}, nil
}

// Configure implements sdk.Executor. Jobs already prepared keep the
// settings they were prepared with.
func (e *Executor) Configure(_ context.Context, raw map[string]any) error {
	cfg := defaultSettings()
	if err := sdk.DecodeConfig(raw, &cfg); err != nil {
		return fmt.Errorf("shell executor: %w", err)
	}
	if cfg.BuildsDir == "" {
		cfg.BuildsDir = defaultSettings().BuildsDir
	}
	if !filepath.IsAbs(cfg.BuildsDir) {
		return fmt.Errorf("shell executor: setting \"builds_dir\" must be an absolute path, got %q", cfg.BuildsDir)
	}
	cfg.BuildsDir = filepath.Clean(cfg.BuildsDir)
	switch cfg.Shell {
	case "", "bash", "sh":
	default:
		return fmt.Errorf("shell executor: setting \"shell\" must be \"bash\" or \"sh\", got %q", cfg.Shell)
	}
	e.mu.Lock()
	e.cfg = cfg
	e.mu.Unlock()
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
