package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/sdk/archive"
	"github.com/berthci/berth/sshexec"
)

// stateVersion is the version of jobState in the handles Prepare returns.
const stateVersion = 1

// portAttempts is how often Prepare starts QEMU on a new port when the
// free port it picked was taken before QEMU could bind it.
const portAttempts = 3

// jobState is what a prepared job keeps in its Handle.State.
type jobState struct {
	// Dir is the job's folder: overlay, pid file, logs.
	Dir string `json:"dir"`
	// PID and Start name the QEMU process (Start: its start time, so that
	// a later process with the same pid is never killed for it).
	PID      int    `json:"pid"`
	Start    uint64 `json:"start"`
	Port     int    `json:"port"`
	User     string `json:"user"`
	BuildDir string `json:"build_dir"`
}

// jobDirName is the name of a job's folder: its owner, then the job.
func jobDirName(o owner, jobID string) string {
	return o.String() + "-" + archive.JobDirName(jobID)
}

// dialConfig is how to log in to a job's guest.
func (e *Executor) dialConfig(cfg *config, st jobState) sshexec.Config {
	c := cfg.DialConfig("127.0.0.1", st.Port, st.User, cfg.auth)
	c.HostKeys.Alias = cfg.alias()
	c.Retries, c.RetryDelay, c.Logger = 3, 250*time.Millisecond, e.logger()
	return c
}

// hint adds what to do about a refused host key.
func hint(err error, cfg *config) error {
	return sshexec.AdviseOnHostKey(err, fmt.Sprintf("every guest of base_image %s is checked under the name %q", cfg.BaseImage, cfg.alias()))
}

// Prepare implements sdk.Executor: it makes the job's overlay, starts its
// VM, waits for the guest's SSH server (boot_timeout), logs in and makes
// the build directory. Preparing the same job again replaces its VM.
func (e *Executor) Prepare(ctx context.Context, job sdk.Job) (sdk.Handle, error) {
	if job.Shell != "" && job.Shell != "bash" && job.Shell != "sh" {
		return sdk.Handle{}, fmt.Errorf("job %q wants shell %q; the qemu executor runs bash and sh", job.ID, job.Shell)
	}
	cfg, err := e.config()
	if err != nil {
		return sdk.Handle{}, err
	}
	dir := filepath.Join(cfg.OverlayDir, jobDirName(e.owner, job.ID))
	e.Conns.Close(job.ID)
	if err := e.destroy(job.ID, dir, 0, 0); err != nil {
		return sdk.Handle{}, fmt.Errorf("job %q: replacing its VM: %w", job.ID, err)
	}
	h, err := e.prepare(ctx, cfg, job, dir)
	if err != nil {
		// Do not keep a VM that cannot run the job: Cleanup would remove
		// it too, but it may be long until then.
		e.Conns.Close(job.ID)
		if derr := e.destroy(job.ID, dir, 0, 0); derr != nil {
			e.logger().Warn("qemu: removing the VM of a failed Prepare", "job", job.ID, "dir", dir, "error", derr)
		}
		return sdk.Handle{}, fmt.Errorf("job %q: %w", job.ID, err)
	}
	return h, nil
}

func (e *Executor) prepare(ctx context.Context, cfg *config, job sdk.Job, dir string) (sdk.Handle, error) {
	if err := os.Mkdir(dir, 0o700); err != nil {
		return sdk.Handle{}, fmt.Errorf("creating the job's folder: %w", err)
	}
	if err := createOverlay(ctx, cfg, dir); err != nil {
		return sdk.Handle{}, err
	}
	started := time.Now()
	bootCtx, cancel := context.WithTimeout(ctx, cfg.BootTimeout)
	defer cancel()
	var v *vm
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return sdk.Handle{}, err
		}
		if v, err = launch(cfg, dir, port); err != nil {
			return sdk.Handle{}, err
		}
		e.mu.Lock()
		e.vms[job.ID] = v
		e.mu.Unlock()
		e.logger().Debug("qemu: VM started", "job", job.ID, "pid", v.pid, "port", port, "accel", cfg.accel)
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		err = awaitBanner(bootCtx, addr, v.done)
		if err == nil {
			break
		}
		switch {
		case errors.Is(err, errVMExited) && attempt < portAttempts && strings.Contains(tail(filepath.Join(dir, qemuLogFile), 5), "host forwarding rule"):
			e.logger().Debug("qemu: the forwarded port was taken; starting the VM again on another", "job", job.ID, "port", port)
			continue
		case errors.Is(err, errVMExited):
			return sdk.Handle{}, fmt.Errorf("the VM ended while the guest booted: %s", v.exitReport())
		case bootCtx.Err() != nil && ctx.Err() == nil:
			msg := fmt.Sprintf("the guest's SSH server did not answer on %s within boot_timeout (%s)", addr, cfg.BootTimeout)
			if out := tail(filepath.Join(dir, consoleFile), 10); out != "" {
				msg += "; the guest's console ended with: " + out
			} else {
				msg += "; the guest's console (serial port) printed nothing"
			}
			return sdk.Handle{}, errors.New(msg)
		default:
			return sdk.Handle{}, fmt.Errorf("waiting for the guest to boot: %w", err)
		}
	}
	st := jobState{Dir: dir, PID: v.pid, Start: v.start, Port: v.port, User: cfg.SSHUser}
	c, err := e.Conns.Get(bootCtx, job.ID, e.dialConfig(cfg, st))
	if err != nil {
		if v.exited() {
			return sdk.Handle{}, fmt.Errorf("the VM ended while berth logged in: %s", v.exitReport())
		}
		return sdk.Handle{}, fmt.Errorf("VM (QEMU pid %d): %w", v.pid, hint(err, cfg))
	}
	booted := time.Since(started)
	if st.BuildDir, err = c.MakeWorkspace(ctx, path.Join(cfg.BuildsDir, archive.JobDirName(job.ID))); err != nil {
		return sdk.Handle{}, fmt.Errorf("VM (QEMU pid %d): %w", v.pid, err)
	}
	e.logger().Debug("qemu: guest ready", "job", job.ID, "pid", v.pid, "boot", booted.Round(time.Millisecond), "build_dir", st.BuildDir)
	b, err := json.Marshal(st)
	if err != nil {
		return sdk.Handle{}, fmt.Errorf("encoding the handle: %w", err)
	}
	return sdk.Handle{JobID: job.ID, Version: stateVersion, State: b, BuildDir: st.BuildDir}, nil
}

// jobDirPattern matches the folder names of jobs: owner, then the job.
var jobDirPattern = regexp.MustCompile(`^([0-9]+\.[0-9]+)-(.+)$`)

func decodeState(h sdk.Handle) (jobState, error) {
	var st jobState
	if h.Version != stateVersion {
		return st, fmt.Errorf("the handle of job %q has state version %d; this qemu executor (%s) reads version %d", h.JobID, h.Version, Version, stateVersion)
	}
	if err := json.Unmarshal(h.State, &st); err != nil {
		return st, fmt.Errorf("the handle of job %q holds no valid state: %w", h.JobID, err)
	}
	// Cleanup deletes the folder: a damaged handle must not name another.
	m := jobDirPattern.FindStringSubmatch(filepath.Base(st.Dir))
	if !filepath.IsAbs(st.Dir) || filepath.Clean(st.Dir) != st.Dir || m == nil || m[2] != archive.JobDirName(h.JobID) {
		return st, fmt.Errorf("the handle of job %q names the folder %q, which is not that job's", h.JobID, st.Dir)
	}
	if st.PID <= 1 || st.Port <= 0 || st.Port > 65535 || !path.IsAbs(st.BuildDir) || st.User == "" {
		return st, fmt.Errorf("the handle of job %q names no VM, port, user or build directory", h.JobID)
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
		Dial: e.dialConfig(cfg, st), BuildDir: st.BuildDir,
		Explain: func(err error) error { return e.explain(hint(err, cfg), h.JobID, st) },
	}, nil
}

// explain adds to a failure of a job's connection that its VM is gone,
// when it is.
func (e *Executor) explain(err error, jobID string, st jobState) error {
	e.mu.Lock()
	v := e.vms[jobID]
	e.mu.Unlock()
	switch {
	case v != nil && v.pid == st.PID && v.exited():
		return fmt.Errorf("%w (the job's VM is gone: %s)", err, v.exitReport())
	case !isQEMUOf(st.PID, st.Start, st.Dir):
		return fmt.Errorf("%w (the job's VM is gone: QEMU, pid %d, no longer runs)", err, st.PID)
	}
	return err
}

// Cleanup implements sdk.Executor: it closes the job's connection, kills
// its VM (everything the job ran goes with it) and deletes the job's
// folder with its overlay. A handle without state (Prepare failed) means
// the folder Prepare would have made.
func (e *Executor) Cleanup(ctx context.Context, h sdk.Handle) error {
	e.Conns.Close(h.JobID)
	cfg, err := e.config()
	if err != nil {
		return err
	}
	dir := filepath.Join(cfg.OverlayDir, jobDirName(e.owner, h.JobID))
	var pid int
	var start uint64
	if len(h.State) > 0 {
		st, err := decodeState(h)
		if err != nil {
			return err
		}
		dir, pid, start = st.Dir, st.PID, st.Start
	}
	if err := e.destroy(h.JobID, dir, pid, start); err != nil {
		return fmt.Errorf("cleaning up job %q: %w", h.JobID, err)
	}
	return nil
}

// destroy kills the job's VM and removes its folder dir. The VM is the one
// this executor started for the job, else the process pid (started at
// start) or the one in the folder's pid file, each only if it is a QEMU
// of that folder. Nothing to remove is fine.
func (e *Executor) destroy(jobID, dir string, pid int, start uint64) error {
	e.mu.Lock()
	v := e.vms[jobID]
	if v != nil && v.dir == dir {
		delete(e.vms, jobID)
	} else {
		v = nil
	}
	e.mu.Unlock()
	if v != nil {
		if err := v.kill(); err != nil {
			return err
		}
	}
	if pid != 0 && isQEMUOf(pid, start, dir) {
		if err := killProcess(pid); err != nil {
			return err
		}
	}
	if err := killFromPidFile(dir); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("removing the job's folder (its overlay disk): %w", err)
	}
	return nil
}

// killFromPidFile kills the QEMU named by dir's pid file, if it is one of
// dir.
func killFromPidFile(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, pidFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading the VM's pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || !isQEMUOf(pid, 0, dir) {
		return nil
	}
	return killProcess(pid)
}
