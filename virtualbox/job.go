package virtualbox

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"path"
	"regexp"
	"time"

	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/sdk/archive"
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
	c := cfg.DialConfig("127.0.0.1", st.Port, st.User, cfg.auth)
	c.HostKeys.Alias = cfg.alias()
	c.Retries, c.Logger = 3, e.logger()
	if booting {
		c.Retries, c.RetryDelay = math.MaxInt32, bootRetryDelay
	}
	return c
}

// alias is the name the guest's host key is looked up under.
func (c *config) alias() string {
	if c.HostKeyAlias != "" {
		return c.HostKeyAlias
	}
	return c.BaseName
}

// hint adds what to do about a refused host key.
func hint(err error, cfg *config) error {
	return sshexec.AdviseOnHostKey(err, fmt.Sprintf("the guests of base VM %q are all checked under that name", cfg.BaseName))
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
	e.Conns.Close(job.ID)
	if err := e.removeVM(ctx, cfg, st.VM); err != nil {
		return sdk.Handle{}, fmt.Errorf("job %q: replacing its VM: %w", job.ID, err)
	}
	handle, err := e.prepare(ctx, cfg, job, st)
	if err != nil {
		// Do not keep a VM that cannot run the job; Cleanup would remove it
		// too, but it may be long until then.
		e.Conns.Close(job.ID)
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
	c, err := e.Conns.Get(bootCtx, job.ID, e.dialConfig(cfg, st, true))
	if err != nil {
		if bootCtx.Err() != nil && ctx.Err() == nil {
			return sdk.Handle{}, fmt.Errorf("VM %q: its SSH server did not answer within boot_timeout (%s): %w", st.VM, cfg.BootTimeout, err)
		}
		return sdk.Handle{}, fmt.Errorf("VM %q: %w", st.VM, hint(err, cfg))
	}
	if st.BuildDir, err = c.MakeWorkspace(ctx, path.Join(cfg.BuildsDir, archive.JobDirName(job.ID))); err != nil {
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
	jobVM := regexp.MustCompile(`^berth-.+-[0-9]+\.[0-9]+-` + regexp.QuoteMeta(archive.JobDirName(h.JobID)) + `$`)
	if !validVMName(st.VM) || !jobVM.MatchString(st.VM) {
		return st, fmt.Errorf("the handle of job %q names VM %q, which is not that job's", h.JobID, st.VM)
	}
	if st.Port <= 0 || st.Port > 65535 || !path.IsAbs(st.BuildDir) {
		return st, fmt.Errorf("the handle of job %q names no port or build directory", h.JobID)
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
	return sshexec.Job{
		Dial: e.dialConfig(cfg, st, false), BuildDir: st.BuildDir,
		Where:   fmt.Sprintf("VM %q", st.VM),
		Explain: func(err error) error { return hint(err, cfg) },
	}, nil
}

// Cleanup implements sdk.Executor: it closes the job's connection, powers
// its VM off and deletes it (everything the job ran goes with it). A
// handle without state (Prepare failed) means the VM Prepare would have
// made.
func (e *Executor) Cleanup(ctx context.Context, h sdk.Handle) error {
	e.Conns.Close(h.JobID)
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
