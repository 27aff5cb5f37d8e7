package virtualbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"path"
	"regexp"
	"time"

	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/sshexec"
)

// stateVersion is the version of jobState in the handles Prepare returns.
const stateVersion = 1

// bootRetryDelay is the pause between attempts to reach a booting guest.
const bootRetryDelay = 250 * time.Millisecond

// jobState is what a prepared job keeps in its Handle.State.
type jobState struct {
	VM       string `json:"vm"`
	Port     int    `json:"port"`
	User     string `json:"user"`
	BuildDir string `json:"build_dir"`
}

// dialConfig is how to reach a job's guest. While it boots, attempts are
// retried until ctx ends.
func (e *Executor) dialConfig(cfg *config, st jobState, booting bool) sshexec.Config {
	alias := cfg.HostKeyAlias
	if alias == "" {
		alias = cfg.BaseName
	}
	keepalive := cfg.KeepaliveInterval
	if keepalive <= 0 {
		keepalive = -1
	}
	c := sshexec.Config{
		Host: "127.0.0.1", Port: st.Port, User: st.User,
		Auth: cfg.auth,
		HostKeys: sshexec.HostKeyPolicy{
			KnownHostsFile: cfg.KnownHostsFile,
			Alias:          alias,
			AcceptAny:      cfg.DisableStrictHostKeyChecking,
		},
		ConnectTimeout:    30 * time.Second,
		Retries:           3,
		KeepaliveInterval: keepalive,
		Logger:            e.logger(),
	}
	if booting {
		c.Retries, c.RetryDelay = math.MaxInt32, bootRetryDelay
	}
	return c
}

// hint adds what to do about a refused host key.
func hint(err error, cfg *config) error {
	var hk *sshexec.HostKeyError
	if errors.As(err, &hk) && hk.Unknown {
		return fmt.Errorf("%w (the guests of base VM %q are all checked under that name; or, not recommended, set disable_strict_host_key_checking)", err, cfg.BaseName)
	}
	return err
}

// Prepare implements sdk.Executor: it clones the base VM, starts the
// clone, waits for its SSH server (boot_timeout) and makes the job's build
// directory in it. Preparing the same job again replaces its VM.
func (e *Executor) Prepare(ctx context.Context, job sdk.Job) (sdk.Handle, error) {
	if job.Shell != "" && job.Shell != "bash" && job.Shell != "sh" {
		return sdk.Handle{}, fmt.Errorf("job %q wants shell %q; the virtualbox executor runs bash and sh", job.ID, job.Shell)
	}
	cfg, err := e.config()
	if err != nil {
		return sdk.Handle{}, err
	}
	st := jobState{VM: vmName(cfg.BaseName, e.owner, job.ID), User: cfg.User}
	e.conns.Close(job.ID)
	if err := e.removeVM(ctx, cfg, st.VM); err != nil {
		return sdk.Handle{}, fmt.Errorf("job %q: replacing its VM: %w", job.ID, err)
	}
	handle, err := e.prepare(ctx, cfg, job, st)
	if err != nil {
		// Do not keep a VM that cannot run the job; Cleanup would remove it
		// too, but it may be long until then.
		e.conns.Close(job.ID)
		if rerr := e.removeVM(context.WithoutCancel(ctx), cfg, st.VM); rerr != nil {
			e.logger().Warn("virtualbox: removing the VM of a failed Prepare", "job", job.ID, "vm", st.VM, "error", rerr)
		}
		return sdk.Handle{}, fmt.Errorf("job %q: %w", job.ID, err)
	}
	return handle, nil
}

func (e *Executor) prepare(ctx context.Context, cfg *config, job sdk.Job, st jobState) (sdk.Handle, error) {
	var err error
	if st.Port, err = e.createVM(ctx, cfg, st.VM); err != nil {
		return sdk.Handle{}, err
	}
	bootCtx, cancel := context.WithTimeout(ctx, cfg.BootTimeout)
	defer cancel()
	c, err := e.conns.Get(bootCtx, job.ID, e.dialConfig(cfg, st, true))
	if err != nil {
		if bootCtx.Err() != nil && ctx.Err() == nil {
			return sdk.Handle{}, fmt.Errorf("VM %q: its SSH server did not answer within boot_timeout (%s): %w", st.VM, cfg.BootTimeout, err)
		}
		return sdk.Handle{}, fmt.Errorf("VM %q: %w", st.VM, hint(err, cfg))
	}
	if st.BuildDir, err = c.MakeWorkspace(ctx, path.Join(cfg.BuildsDir, sshexec.JobDirName(job.ID))); err != nil {
		return sdk.Handle{}, fmt.Errorf("VM %q: %w", st.VM, err)
	}
	b, err := json.Marshal(st)
	if err != nil {
		return sdk.Handle{}, fmt.Errorf("encoding the handle: %w", err)
	}
	return sdk.Handle{JobID: job.ID, Version: stateVersion, State: b, BuildDir: st.BuildDir}, nil
}

func decodeState(h sdk.Handle) (jobState, error) {
	var st jobState
	if h.Version != stateVersion {
		return st, fmt.Errorf("the handle of job %q has state version %d; this virtualbox executor (%s) reads version %d", h.JobID, h.Version, Version, stateVersion)
	}
	if err := json.Unmarshal(h.State, &st); err != nil {
		return st, fmt.Errorf("the handle of job %q holds no valid state: %w", h.JobID, err)
	}
	// Cleanup deletes the VM: a damaged handle must not name another.
	jobVM := regexp.MustCompile(`^berth-.+-[0-9]+\.[0-9]+-` + regexp.QuoteMeta(sshexec.JobDirName(h.JobID)) + `$`)
	if !validVMName(st.VM) || !jobVM.MatchString(st.VM) {
		return st, fmt.Errorf("the handle of job %q names VM %q, which is not that job's", h.JobID, st.VM)
	}
	if st.Port <= 0 || st.Port > 65535 || !path.IsAbs(st.BuildDir) {
		return st, fmt.Errorf("the handle of job %q names no port or build directory", h.JobID)
	}
	return st, nil
}

// client returns the job's connection, dialling it again after a crash
// of the plugin or a lost connection.
func (e *Executor) client(ctx context.Context, h sdk.Handle) (*sshexec.Client, jobState, error) {
	st, err := decodeState(h)
	if err != nil {
		return nil, st, err
	}
	cfg, err := e.config()
	if err != nil {
		return nil, st, err
	}
	c, err := e.conns.Get(ctx, h.JobID, e.dialConfig(cfg, st, false))
	if err != nil {
		return nil, st, fmt.Errorf("job %q, VM %q: %w", h.JobID, st.VM, hint(err, cfg))
	}
	return c, st, nil
}

// Run implements sdk.Executor: the step runs on a session of its own (see
// sshexec.Client.Run).
func (e *Executor) Run(ctx context.Context, h sdk.Handle, step sdk.Step, out sdk.Output) (int, error) {
	c, st, err := e.client(ctx, h)
	if err != nil {
		return -1, err
	}
	code, err := c.Run(ctx, sshexec.Stage{
		Dir: st.BuildDir, Script: step.Script, Shell: step.Shell, GracePeriod: step.GracePeriod,
		Stdout: out.Stdout, Stderr: out.Stderr,
	})
	if err != nil {
		return code, fmt.Errorf("step %q of job %q (VM %q): %w", step.Name, h.JobID, st.VM, err)
	}
	return code, nil
}

// Upload implements sdk.Executor.
func (e *Executor) Upload(ctx context.Context, h sdk.Handle, dir string, r io.Reader) error {
	c, st, err := e.client(ctx, h)
	if err != nil {
		return err
	}
	if err := c.Upload(ctx, st.BuildDir, dir, r); err != nil {
		return fmt.Errorf("job %q (VM %q): %w", h.JobID, st.VM, err)
	}
	return nil
}

// Download implements sdk.Executor.
func (e *Executor) Download(ctx context.Context, h sdk.Handle, paths []string, w io.Writer) error {
	c, st, err := e.client(ctx, h)
	if err != nil {
		return err
	}
	if err := c.Download(ctx, st.BuildDir, paths, w); err != nil {
		return fmt.Errorf("job %q (VM %q): %w", h.JobID, st.VM, err)
	}
	return nil
}

// Cleanup implements sdk.Executor: it closes the job's connection, powers
// its VM off and deletes it (everything the job ran goes with it). A
// handle without state (Prepare failed) means the VM Prepare would have
// made.
func (e *Executor) Cleanup(ctx context.Context, h sdk.Handle) error {
	e.conns.Close(h.JobID)
	cfg, err := e.config()
	if err != nil {
		return err
	}
	name := vmName(cfg.BaseName, e.owner, h.JobID)
	if len(h.State) > 0 {
		st, err := decodeState(h)
		if err != nil {
			return err
		}
		name = st.VM
	}
	if err := e.removeVM(ctx, cfg, name); err != nil {
		return fmt.Errorf("cleaning up job %q: %w", h.JobID, err)
	}
	return nil
}
