// Package bwrapexec is a berth executor that runs every step in a
// bubblewrap (bwrap) sandbox. It is the example of a custom executor: one
// file, built against the public SDK only.
//
// Each step is one bwrap process. The sandbox sees the host's /usr, /bin,
// /sbin, /lib*, /etc read-only, a private /tmp (a tmpfs that lives as long
// as the step), its own /proc and /dev, and the job's build directory
// read-write at /builds/job. It has its own user, PID, mount, IPC, UTS,
// cgroup and (unless the "network" setting is true) network namespaces,
// keeps no capabilities, and a clean environment (PATH, HOME=/tmp,
// LANG). On the host the build directory is <builds_dir>/<job id>.
//
// Stopping a step: bwrap's PID namespace holds everything the step started,
// and nothing can leave it. A cancel sends SIGTERM to every process in that
// namespace, then SIGKILL after the step's grace period. When the
// namespace's first process (bwrap's init) dies, the kernel kills the rest,
// so nothing of a step outlives it, background processes included.
package bwrapexec

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/sdk/archive"
)

// Version is the executor's version.
const Version = "0.1.0"

// BuildDir is where the job's build directory appears inside the sandbox.
const BuildDir = "/builds/job"

// scriptPath is where a step's script appears inside the sandbox.
const scriptPath = "/berth/step.sh"

// settings are the executor's settings ([runners.bwrap] in config.toml).
type settings struct {
	BuildsDir    string   `mapstructure:"builds_dir" help:"host directory holding a build directory per job (absolute)"`
	Network      bool     `mapstructure:"network" help:"let steps use the host's network (default: no network at all)"`
	ExtraROBinds []string `mapstructure:"extra_ro_binds" help:"more host paths to show read-only in the sandbox: PATH or HOST_PATH:SANDBOX_PATH"`
}

func defaultSettings() settings {
	return settings{BuildsDir: filepath.Join(os.TempDir(), "berth-bwrap-builds")}
}

// state is what a Handle carries: where the job lives on the host and the
// settings it was prepared with.
type state struct {
	HostDir      string   `json:"host_dir"`
	Network      bool     `json:"network"`
	ExtraROBinds []string `json:"extra_ro_binds,omitempty"`
}

const stateVersion = 1

// Executor runs steps in bubblewrap sandboxes. It is safe for concurrent use.
type Executor struct {
	mu  sync.Mutex
	cfg settings
	// running holds, per job ID, the PID namespaces of the steps running,
	// each with a channel closed when the step's Run has ended, so that
	// Cleanup can kill what a job still has running.
	running map[string]map[uint64]chan struct{}
}

var _ sdk.Executor = (*Executor)(nil)

// New returns a bwrap executor with default settings.
func New() *Executor {
	return &Executor{cfg: defaultSettings(), running: map[string]map[uint64]chan struct{}{}}
}

// Info implements sdk.Executor.
func (e *Executor) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{
		Name:        "bwrap",
		Version:     Version,
		Description: "runs each step in a bubblewrap sandbox: host /usr and /etc read-only, private /tmp, own PID namespace, no network by default",
		Capabilities: sdk.Capabilities{
			CancelGracefully: true,
			Isolated:         true,
			Shells:           []string{"bash", "sh"},
		},
		Config: sdk.Schema(defaultSettings()),
	}, nil
}

// Configure implements sdk.Executor.
func (e *Executor) Configure(_ context.Context, raw map[string]any) error {
	cfg := defaultSettings()
	if err := sdk.DecodeConfig(raw, &cfg); err != nil {
		return fmt.Errorf("bwrap executor: %w", err)
	}
	if cfg.BuildsDir == "" {
		cfg.BuildsDir = defaultSettings().BuildsDir
	}
	if !filepath.IsAbs(cfg.BuildsDir) {
		return fmt.Errorf("bwrap executor: setting \"builds_dir\" must be an absolute path, got %q", cfg.BuildsDir)
	}
	cfg.BuildsDir = filepath.Clean(cfg.BuildsDir)
	for _, b := range cfg.ExtraROBinds {
		src, dst := splitBind(b)
		if !filepath.IsAbs(src) || !filepath.IsAbs(dst) {
			return fmt.Errorf("bwrap executor: setting \"extra_ro_binds\": %q must be an absolute path (PATH or HOST_PATH:SANDBOX_PATH)", b)
		}
		if _, err := os.Stat(src); err != nil {
			return fmt.Errorf("bwrap executor: setting \"extra_ro_binds\": %w", err)
		}
	}
	e.mu.Lock()
	e.cfg = cfg
	e.mu.Unlock()
	return nil
}

func (e *Executor) settings() settings {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cfg
}

func splitBind(b string) (src, dst string) {
	if src, dst, ok := strings.Cut(b, ":"); ok {
		return src, dst
	}
	return b, b
}

// Prepare implements sdk.Executor: it makes the host-side build directory
// and checks, with one empty run, that bwrap can build the sandbox here.
func (e *Executor) Prepare(ctx context.Context, job sdk.Job) (sdk.Handle, error) {
	if job.Shell != "" && job.Shell != "bash" && job.Shell != "sh" {
		return sdk.Handle{}, fmt.Errorf("bwrap executor: the job wants the shell %q; this executor runs bash and sh", job.Shell)
	}
	if job.ID == "" {
		return sdk.Handle{}, errors.New("bwrap executor: the job has no ID")
	}
	cfg := e.settings()
	st := state{
		HostDir:      filepath.Join(cfg.BuildsDir, dirName(job.ID)),
		Network:      cfg.Network,
		ExtraROBinds: cfg.ExtraROBinds,
	}
	if err := os.MkdirAll(st.HostDir, 0o700); err != nil {
		return sdk.Handle{}, fmt.Errorf("bwrap executor: creating the build directory: %w", err)
	}
	if _, err := exec.LookPath("bwrap"); err != nil {
		return sdk.Handle{}, fmt.Errorf("bwrap executor: bubblewrap is not installed (apt-get install bubblewrap): %w", err)
	}
	probe := exec.CommandContext(ctx, "bwrap", append(bwrapArgs(st, false), "--", "true")...)
	if msg, err := probe.CombinedOutput(); err != nil {
		return sdk.Handle{}, fmt.Errorf("bwrap executor: bwrap cannot build the sandbox on this machine (%s): %w",
			strings.TrimSpace(string(msg)), err)
	}
	data, err := json.Marshal(st)
	if err != nil { // cannot happen with these field types
		return sdk.Handle{}, fmt.Errorf("bwrap executor: encoding the handle: %w", err)
	}
	slog.Debug("prepared job", "job", job.ID, "dir", st.HostDir)
	return sdk.Handle{JobID: job.ID, Version: stateVersion, State: data, BuildDir: BuildDir}, nil
}

// dirName turns a job ID into a directory name: the ID itself when it is
// a plain name, otherwise the ID with other characters replaced and a hash
// that keeps it unique.
func dirName(id string) string {
	clean := []byte(id)
	for i, c := range clean {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.' && i > 0) {
			clean[i] = '_'
		}
	}
	if string(clean) == id {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	return string(clean) + "-" + hex.EncodeToString(sum[:4])
}

// state reads the handle's state; a handle with only a JobID (after a
// failed Prepare) gets the directory Prepare would have made.
func (e *Executor) state(h sdk.Handle) (state, error) {
	if h.JobID == "" {
		return state{}, errors.New("bwrap executor: the handle has no job ID")
	}
	if len(h.State) == 0 {
		return state{HostDir: filepath.Join(e.settings().BuildsDir, dirName(h.JobID))}, nil
	}
	if h.Version != stateVersion {
		return state{}, fmt.Errorf("bwrap executor: handle of job %q has version %d, this executor reads version %d", h.JobID, h.Version, stateVersion)
	}
	var st state
	if err := json.Unmarshal(h.State, &st); err != nil {
		return state{}, fmt.Errorf("bwrap executor: handle of job %q: %w", h.JobID, err)
	}
	if !filepath.IsAbs(st.HostDir) || filepath.Base(st.HostDir) != dirName(h.JobID) {
		return state{}, fmt.Errorf("bwrap executor: handle of job %q names the build directory %q, which is not the job's", h.JobID, st.HostDir)
	}
	return st, nil
}

// preparedDir is the host-side build directory of a prepared job.
func (e *Executor) preparedDir(h sdk.Handle) (state, error) {
	st, err := e.state(h)
	if err != nil {
		return state{}, err
	}
	if _, err := os.Stat(st.HostDir); errors.Is(err, fs.ErrNotExist) {
		return state{}, fmt.Errorf("bwrap executor: job %q is not prepared (no %s): %w", h.JobID, st.HostDir, sdk.ErrNotFound)
	}
	return st, nil
}

// bwrapArgs are bwrap's options for a job's sandbox, before "--".
func bwrapArgs(st state, withScript bool) []string {
	args := []string{
		"--unshare-all", "--die-with-parent", "--new-session",
		// As root, bwrap would leave the sandbox all capabilities in its
		// user namespace, enough to remount /usr read-write.
		"--cap-drop", "ALL",
		"--ro-bind", "/usr", "/usr",
	}
	if st.Network {
		args = append(args, "--share-net")
	}
	// On merged-/usr systems these are symbolic links into /usr.
	for _, p := range []string{"/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"} {
		fi, err := os.Lstat(p)
		switch {
		case err != nil:
		case fi.Mode()&fs.ModeSymlink != 0:
			if target, err := os.Readlink(p); err == nil {
				args = append(args, "--symlink", target, p)
			}
		case fi.IsDir():
			args = append(args, "--ro-bind", p, p)
		}
	}
	args = append(args,
		"--ro-bind", "/etc", "/etc",
		"--proc", "/proc",
		"--dev", "/dev",
		"--tmpfs", "/tmp",
		"--bind", st.HostDir, BuildDir,
	)
	for _, b := range st.ExtraROBinds {
		src, dst := splitBind(b)
		args = append(args, "--ro-bind", src, dst)
	}
	if withScript {
		// fd 3 carries the script, fd 4 receives bwrap's status.
		args = append(args, "--ro-bind-data", "3", scriptPath, "--json-status-fd", "4")
	}
	return append(args,
		"--chdir", BuildDir,
		"--clearenv",
		"--setenv", "PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"--setenv", "HOME", "/tmp",
		"--setenv", "LANG", "C.UTF-8",
	)
}

// status is one of the JSON documents bwrap writes to --json-status-fd:
// first the sandbox's namespaces, then, if the command ran, its exit code.
type status struct {
	PIDNamespace uint64 `json:"pid-namespace"`
	ExitCode     *int   `json:"exit-code"`
}

// Run implements sdk.Executor.
func (e *Executor) Run(ctx context.Context, h sdk.Handle, step sdk.Step, out sdk.Output) (int, error) {
	st, err := e.preparedDir(h)
	if err != nil {
		return -1, err
	}
	shell := step.Shell
	switch shell {
	case "":
		shell = "sh"
	case "bash", "sh":
	default:
		return -1, fmt.Errorf("bwrap executor: step %q wants the shell %q; this executor runs bash and sh", step.Name, shell)
	}

	scriptR, scriptW, err := os.Pipe()
	if err != nil {
		return -1, fmt.Errorf("bwrap executor: %w", err)
	}
	statusR, statusW, err := os.Pipe()
	if err != nil {
		scriptR.Close()
		scriptW.Close()
		return -1, fmt.Errorf("bwrap executor: %w", err)
	}
	defer statusR.Close()
	cmd := exec.Command("bwrap", append(bwrapArgs(st, true), "--", shell, scriptPath)...)
	cmd.Stdout, cmd.Stderr = out.Stdout, out.Stderr
	cmd.ExtraFiles = []*os.File{scriptR, statusW}
	// Its own process group: a Ctrl-C meant for the host does not reach it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	scriptR.Close()
	statusW.Close()
	if err != nil {
		scriptW.Close()
		return -1, fmt.Errorf("bwrap executor: starting bwrap: %w", err)
	}
	// bwrap reads the script while it builds the sandbox; a script larger
	// than a pipe's buffer must be written while it does.
	go func() {
		_, _ = io.WriteString(scriptW, step.Script)
		scriptW.Close()
	}()

	// The first status document names the PID namespace. bwrap writes it
	// right after creating the sandbox; if bwrap fails before, the pipe
	// just closes.
	statuses := json.NewDecoder(statusR)
	var first status
	if err := statuses.Decode(&first); err != nil || first.PIDNamespace == 0 {
		werr := cmd.Wait()
		return -1, fmt.Errorf("bwrap executor: bwrap did not start the sandbox (its message is in the step's output): %w", errors.Join(werr, err))
	}
	ns := first.PIDNamespace
	defer e.track(h.JobID, ns)()

	// The last status document has the exit code; it is missing when the
	// command never ran (bwrap failed to set up) or bwrap's init was killed.
	exitCode := make(chan *int, 1)
	go func() {
		var last status
		for statuses.Decode(&last) == nil && last.ExitCode == nil {
		}
		exitCode <- last.ExitCode
	}()
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()

	var werr error
	select {
	case werr = <-waited:
	case <-ctx.Done():
		slog.Debug("stopping step", "job", h.JobID, "step", step.Name, "grace", step.GracePeriod)
		signalSandbox(ns, syscall.SIGTERM)
		timer := time.NewTimer(step.GracePeriod)
		select {
		case werr = <-waited:
		case <-timer.C:
			signalSandbox(ns, syscall.SIGKILL)
			werr = <-waited
		}
		timer.Stop()
	}
	// bwrap is gone. Its init, whose death takes every other process of
	// the namespace with it, may still be ending.
	if err := waitSandboxGone(ns); err != nil {
		return -1, fmt.Errorf("bwrap executor: step %q: %w", step.Name, err)
	}
	code := <-exitCode
	if ctx.Err() != nil {
		c := cmd.ProcessState.ExitCode()
		if code != nil {
			c = *code
		}
		return c, fmt.Errorf("bwrap executor: step %q stopped: %w", step.Name, ctx.Err())
	}
	if code == nil {
		return -1, fmt.Errorf("bwrap executor: bwrap could not run step %q (its message is in the step's output): %w", step.Name, werr)
	}
	return *code, nil
}

// track records a running step's PID namespace for a job; the function it
// returns forgets it again.
func (e *Executor) track(jobID string, ns uint64) (untrack func()) {
	done := make(chan struct{})
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.running[jobID] == nil {
		e.running[jobID] = map[uint64]chan struct{}{}
	}
	e.running[jobID][ns] = done
	return func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		delete(e.running[jobID], ns)
		if len(e.running[jobID]) == 0 {
			delete(e.running, jobID)
		}
		close(done)
	}
}

// sandboxProcesses returns the processes of the PID namespace ns (seen
// from the host as the inode of /proc/PID/ns/pid) that have not ended.
// Each is held by a pidfd, so a signal cannot reach another process that
// reused its pid; the caller releases them.
func sandboxProcesses(ns uint64) []*os.Process {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		slog.Error("cannot list the processes of a sandbox", "error", err)
		return nil
	}
	var procs []*os.Process
	for _, d := range entries {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		p, err := os.FindProcess(pid) // hold it before looking
		if err != nil {
			continue
		}
		var fi syscall.Stat_t
		if syscall.Stat("/proc/"+d.Name()+"/ns/pid", &fi) == nil && fi.Ino == ns && !ended(d.Name()) {
			procs = append(procs, p)
			continue
		}
		_ = p.Release()
	}
	return procs
}

// ended reports whether process pid is a zombie: it has ended and only
// waits to be reaped (which, for an orphan in a container whose PID 1 does
// not reap, may never happen).
func ended(pid string) bool {
	stat, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return true
	}
	// "pid (command) state …"; the command may hold spaces and ")".
	fields := bytes.Fields(stat[bytes.LastIndexByte(stat, ')')+1:])
	return len(fields) == 0 || fields[0][0] == 'Z' || fields[0][0] == 'X'
}

// signalSandbox sends sig to every process in the PID namespace ns. From
// outside, SIGKILL reaches the namespace's init too; SIGTERM only the
// others.
func signalSandbox(ns uint64, sig syscall.Signal) {
	for _, p := range sandboxProcesses(ns) {
		_ = p.Signal(sig)
		_ = p.Release()
	}
}

// waitSandboxGone waits until no process of the PID namespace ns runs.
func waitSandboxGone(ns uint64) error {
	deadline := time.Now().Add(10 * time.Second)
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		procs := sandboxProcesses(ns)
		for _, p := range procs {
			_ = p.Release()
		}
		switch {
		case len(procs) == 0:
			return nil
		case time.Now().After(deadline):
			return fmt.Errorf("%d processes of the sandbox still run after bwrap ended", len(procs))
		}
		time.Sleep(delay)
	}
}

// Upload implements sdk.Executor.
func (e *Executor) Upload(ctx context.Context, h sdk.Handle, dir string, r io.Reader) error {
	st, err := e.preparedDir(h)
	if err != nil {
		return err
	}
	dest, err := archive.Join(st.HostDir, dir)
	if err != nil {
		return fmt.Errorf("bwrap executor: upload: %w", err)
	}
	if err := archive.Extract(ctx, r, dest); err != nil {
		return fmt.Errorf("bwrap executor: upload to %q: %w", dir, err)
	}
	return nil
}

// Download implements sdk.Executor.
func (e *Executor) Download(ctx context.Context, h sdk.Handle, paths []string, w io.Writer) error {
	st, err := e.preparedDir(h)
	if err != nil {
		return err
	}
	if err := archive.Write(ctx, w, st.HostDir, paths); err != nil {
		return fmt.Errorf("bwrap executor: download: %w", err)
	}
	return nil
}

// Cleanup implements sdk.Executor: it kills the job's running sandboxes and
// removes its build directory. Cleaning up twice is fine.
func (e *Executor) Cleanup(ctx context.Context, h sdk.Handle) error {
	st, err := e.state(h)
	if err != nil {
		return err
	}
	var steps []chan struct{}
	e.mu.Lock()
	for ns, done := range e.running[h.JobID] {
		signalSandbox(ns, syscall.SIGKILL)
		steps = append(steps, done)
	}
	e.mu.Unlock()
	for _, done := range steps {
		select {
		case <-done:
		case <-ctx.Done():
			return fmt.Errorf("bwrap executor: waiting for the steps of job %q to end: %w", h.JobID, ctx.Err())
		}
	}
	if err := os.RemoveAll(st.HostDir); err != nil {
		// A job may have left read-only directories behind.
		_ = filepath.WalkDir(st.HostDir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				_ = os.Chmod(p, 0o700)
			}
			return nil
		})
		if err := os.RemoveAll(st.HostDir); err != nil {
			return fmt.Errorf("bwrap executor: removing the build directory of job %q: %w", h.JobID, err)
		}
	}
	slog.Debug("cleaned up job", "job", h.JobID, "dir", st.HostDir)
	return nil
}
