// Package ssh is berth's ssh executor: it runs jobs on a machine the team
// already has, over SSH (golang.org/x/crypto/ssh, through the shared
// transport in sshexec).
//
// Each job gets one connection and a build directory of its own under the
// remote builds_dir, removed on Cleanup; each step gets one session. Steps
// run with bash or sh as the leader of their own remote process group: a
// cancel sends SIGTERM to the group, SIGKILL after the grace period, and
// only then closes the session (OpenSSH leaves a command without a
// terminal running when its session closes). What a step leaves running in
// its group is killed when it ends.
//
// Host keys are checked strictly against known_hosts_file by default; an
// unknown host or a changed key is an error naming the host, the key's
// fingerprint and the file. disable_strict_host_key_checking turns that
// off, as in gitlab-runner.
//
// It isolates nothing: jobs share the remote account's files and
// processes, as with gitlab-runner's ssh executor.
package ssh

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"sync"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/sdk/archive"
	"github.com/berthci/berth/sshexec"
)

// Version is the ssh executor's version.
const Version = "0.1.0"

// stateVersion is the version of jobState in the handles Prepare returns.
const stateVersion = 1

// settings are the executor's settings ([runners.ssh] in config.toml),
// named as gitlab-runner names them where it has them.
type settings struct {
	Host           string `mapstructure:"host" required:"true" help:"the machine to run jobs on (name or address)"`
	Port           int    `mapstructure:"port" help:"its SSH port"`
	User           string `mapstructure:"user" required:"true" help:"the account to log in as"`
	Password       string `mapstructure:"password" secret:"true" help:"the account's password (or set identity_file)"`
	sshexec.Login  `mapstructure:",squash"`
	ConnectTimeout time.Duration `mapstructure:"connect_timeout" help:"bound of one connection attempt (TCP, handshake, login)"`
	ConnectRetries int           `mapstructure:"connect_retries" help:"further attempts after a connection attempt fails for a network reason"`
}

func defaultSettings() settings {
	return settings{
		Port:           sshexec.DefaultPort,
		Login:          sshexec.DefaultLogin(),
		ConnectTimeout: sshexec.DefaultConnectTimeout,
		ConnectRetries: 3,
	}
}

// config is a checked configuration: the settings and what was made of
// them.
type config struct {
	settings
	auth []gossh.AuthMethod
}

// Executor is the ssh executor. Its methods are safe for concurrent use;
// Run, Upload and Download are sshexec.Jobs'.
type Executor struct {
	sshJobs
	log *slog.Logger

	mu  sync.Mutex
	cfg *config // nil until Configure
}

// sshJobs are the executor's jobs on the host, embedded under a name of
// the package's own.
type sshJobs = sshexec.Jobs

// Option changes how New sets up the executor.
type Option func(*Executor)

// WithLogger makes the executor log to l instead of slog's default logger
// (the one at the time of logging, so that sdk.Serve's applies).
func WithLogger(l *slog.Logger) Option { return func(e *Executor) { e.log = l } }

// New returns an ssh executor; it needs Configure before it can prepare
// a job.
func New(opts ...Option) *Executor {
	e := &Executor{}
	e.Locate = e.locate
	for _, o := range opts {
		o(e)
	}
	return e
}

var _ sdk.Executor = (*Executor)(nil)

// Info implements sdk.Executor.
func (e *Executor) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{
		Name:        "ssh",
		Version:     Version,
		Description: "runs jobs on another machine over SSH, one connection and build directory per job, no isolation",
		Capabilities: sdk.Capabilities{
			CancelGracefully: true,
			Shells:           []string{"bash", "sh"},
		},
		Config: sdk.Schema(defaultSettings()),
	}, nil
}

// Configure implements sdk.Executor. The identity file is read here, so
// that a missing or undecryptable key is reported at once.
func (e *Executor) Configure(_ context.Context, raw map[string]any) error {
	s := defaultSettings()
	if err := sdk.DecodeConfig(raw, &s); err != nil {
		return fmt.Errorf("ssh executor: %w", err)
	}
	cfg, err := checkSettings(s)
	if err != nil {
		return fmt.Errorf("ssh executor: %w", err)
	}
	e.mu.Lock()
	e.cfg = cfg
	e.mu.Unlock()
	return nil
}

func checkSettings(s settings) (*config, error) {
	if s.Port <= 0 || s.Port > 65535 {
		return nil, fmt.Errorf("setting \"port\" must be a TCP port (1-65535), got %d", s.Port)
	}
	if s.ConnectRetries < 0 {
		return nil, fmt.Errorf("setting \"connect_retries\" must not be negative, got %d", s.ConnectRetries)
	}
	auth, err := s.Login.Check(s.Password, "password")
	if err != nil {
		return nil, err
	}
	return &config{settings: s, auth: auth}, nil
}

func (e *Executor) logger() *slog.Logger {
	if e.log != nil {
		return e.log
	}
	return slog.Default()
}

func (e *Executor) config() (*config, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cfg == nil {
		return nil, errors.New("ssh executor: not configured (host, user and a password or identity_file are needed)")
	}
	return e.cfg, nil
}

// jobState is what a prepared job keeps in its Handle.State: where it
// runs, so that a later Configure does not move it.
type jobState struct {
	Host     string `json:"host"`
	Port     int    `json:"port"`
	User     string `json:"user"`
	BuildDir string `json:"build_dir"`
}

// dialConfig is how to reach the host of a job.
func (e *Executor) dialConfig(cfg *config, st jobState) sshexec.Config {
	c := cfg.DialConfig(st.Host, st.Port, st.User, cfg.auth)
	c.ConnectTimeout, c.Retries, c.Logger = cfg.ConnectTimeout, cfg.ConnectRetries, e.logger()
	return c
}

// Prepare implements sdk.Executor: it connects (the job's one connection)
// and makes the job's build directory <builds_dir>/<job ID> and its
// sibling <build dir>.tmp on the host. Preparing the same job again reuses
// both.
func (e *Executor) Prepare(ctx context.Context, job sdk.Job) (sdk.Handle, error) {
	if job.Shell != "" && job.Shell != "bash" && job.Shell != "sh" {
		return sdk.Handle{}, fmt.Errorf("job %q wants shell %q; the ssh executor runs bash and sh", job.ID, job.Shell)
	}
	if job.Image.Name != "" || len(job.Services) > 0 {
		e.logger().Debug("the ssh executor ignores images and services", "job", job.ID)
	}
	cfg, err := e.config()
	if err != nil {
		return sdk.Handle{}, err
	}
	st := jobState{Host: cfg.Host, Port: cfg.Port, User: cfg.User}
	c, err := e.Conns.Get(ctx, job.ID, e.dialConfig(cfg, st))
	if err != nil {
		return sdk.Handle{}, fmt.Errorf("job %q: %w", job.ID, hint(err))
	}
	st.BuildDir, err = c.MakeWorkspace(ctx, path.Join(cfg.BuildsDir, archive.JobDirName(job.ID)))
	if err != nil {
		return sdk.Handle{}, fmt.Errorf("job %q: %w", job.ID, err)
	}
	b, err := json.Marshal(st)
	if err != nil {
		return sdk.Handle{}, fmt.Errorf("encoding the handle of job %q: %w", job.ID, err)
	}
	return sdk.Handle{JobID: job.ID, Version: stateVersion, State: b, BuildDir: st.BuildDir}, nil
}

// hint adds what to do about a refused host key.
func hint(err error) error { return sshexec.AdviseOnHostKey(err, "") }

func decodeState(h sdk.Handle) (jobState, error) {
	var st jobState
	if h.Version != stateVersion {
		return st, fmt.Errorf("the handle of job %q has state version %d; this ssh executor (%s) reads version %d", h.JobID, h.Version, Version, stateVersion)
	}
	if err := json.Unmarshal(h.State, &st); err != nil {
		return st, fmt.Errorf("the handle of job %q holds no valid state: %w", h.JobID, err)
	}
	// Cleanup removes the build directory: a damaged handle must not point
	// it at anything but a job's directory.
	if !path.IsAbs(st.BuildDir) || path.Clean(st.BuildDir) != st.BuildDir || path.Base(st.BuildDir) != archive.JobDirName(h.JobID) {
		return st, fmt.Errorf("the handle of job %q names build directory %q, which is not that job's", h.JobID, st.BuildDir)
	}
	if st.Host == "" || st.User == "" || st.Port <= 0 {
		return st, fmt.Errorf("the handle of job %q names no host to connect to", h.JobID)
	}
	return st, nil
}

// locate says where the job of h runs (see sshexec.Jobs).
func (e *Executor) locate(h sdk.Handle) (sshexec.Job, error) {
	st, err := decodeState(h)
	if err != nil {
		return sshexec.Job{}, err
	}
	cfg, err := e.config()
	if err != nil {
		return sshexec.Job{}, err
	}
	return sshexec.Job{Dial: e.dialConfig(cfg, st), BuildDir: st.BuildDir, Explain: hint}, nil
}

// Cleanup implements sdk.Executor: it kills the job's steps still running
// on the host, removes the build directory and its .tmp sibling, and closes
// the job's connection. A handle without state (Prepare failed) means the
// directory Prepare would have made with the current settings.
func (e *Executor) Cleanup(ctx context.Context, h sdk.Handle) error {
	defer e.Conns.Close(h.JobID)
	cfg, err := e.config()
	if err != nil {
		return err
	}
	var st jobState
	if len(h.State) == 0 {
		st = jobState{Host: cfg.Host, Port: cfg.Port, User: cfg.User, BuildDir: path.Join(cfg.BuildsDir, archive.JobDirName(h.JobID))}
	} else if st, err = decodeState(h); err != nil {
		return err
	}
	c, err := e.Conns.Get(ctx, h.JobID, e.dialConfig(cfg, st))
	if err != nil {
		return fmt.Errorf("cleaning up job %q: %w", h.JobID, hint(err))
	}
	if err := c.RemoveWorkspace(ctx, st.BuildDir); err != nil {
		return fmt.Errorf("cleaning up job %q: %w", h.JobID, err)
	}
	return nil
}
