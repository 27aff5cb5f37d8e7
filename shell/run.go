//go:build linux

package shell

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/berthci/berth/sdk"
)

const (
	// readSize is how much output one read takes from a step's pipes.
	readSize = sdk.MaxChunk
	// killWait bounds how long a step's processes may take to die after
	// SIGKILL before Run reports them as a system failure.
	killWait = 10 * time.Second
	// escapedOutputWait is how long Run keeps reading a step's output after
	// its process group is gone, for processes that left the group and
	// still hold the pipes.
	escapedOutputWait = 2 * time.Second
)

// Run implements sdk.Executor. The script is written to a file in
// <build dir>.tmp and run by bash (--noprofile --norc) or sh, with stdin
// from /dev/null, the build directory as working directory and only the
// allow-listed variables of the plugin's environment. The step gets a
// process group of its own; whatever is left of it when the shell exits is
// killed. Cancelling ctx sends SIGTERM to the group and SIGKILL after
// step.GracePeriod; Run returns once no process of the group is left.
func (e *Executor) Run(ctx context.Context, h sdk.Handle, step sdk.Step, out sdk.Output) (int, error) {
	st, err := e.state(h)
	if err != nil {
		return -1, err
	}
	shellPath, args, err := e.interpreter(step.Shell, st.Shell)
	if err != nil {
		return -1, fmt.Errorf("step %q of job %q: %w", step.Name, h.JobID, err)
	}
	script, err := writeScript(st.BuildDir+".tmp", step.Script)
	if err != nil {
		return -1, fmt.Errorf("step %q of job %q: %w", step.Name, h.JobID, err)
	}
	defer os.Remove(script)

	stdout, err := newPipe()
	if err != nil {
		return -1, fmt.Errorf("step %q of job %q: %w", step.Name, h.JobID, err)
	}
	stderr, err := newPipe()
	if err != nil {
		stdout.close()
		return -1, fmt.Errorf("step %q of job %q: %w", step.Name, h.JobID, err)
	}
	cmd := &exec.Cmd{
		Path: shellPath,
		Args: append(append([]string{shellPath}, args...), script),
		Dir:  st.BuildDir,
		// JobMarker lets a Cleanup from a fresh plugin process find what a
		// crashed one left running (see killStrays).
		Env:    append(allowedEnv(e.environ(), st.EnvAllowlist), JobMarker+"="+h.JobID),
		Stdout: stdout.w,
		Stderr: stderr.w,
		// Pdeathsig: a shell does not outlive a plugin that dies.
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL},
	}
	err = cmd.Start()
	stdout.w.Close()
	stderr.w.Close()
	if err != nil {
		stdout.r.Close()
		stderr.r.Close()
		return -1, fmt.Errorf("starting %s for step %q of job %q: %w", shellPath, step.Name, h.JobID, err)
	}
	pgid := cmd.Process.Pid
	e.track(h.JobID, pgid)
	defer e.untrack(h.JobID, pgid)

	outDone := copyOutput(stdout.r, out.Stdout)
	errDone := copyOutput(stderr.r, out.Stderr)

	exited := make(chan error, 1)
	go func() { exited <- waitExited(pgid) }()

	stopped, exitErr := e.stop(ctx, pgid, step.GracePeriod, exited)
	if exitErr != nil {
		// How the shell ended is unknown; it may even still run.
		_ = signalGroup(pgid, syscall.SIGKILL)
		go func() { _ = cmd.Wait() }() // reaps the shell whenever it ends
		e.drain(h.JobID, step.Name, stdout.r, stderr.r, outDone, errDone)
		return -1, fmt.Errorf("waiting for step %q of job %q: %w", step.Name, h.JobID, exitErr)
	}
	// The shell has exited but is not reaped yet, so its pid (the group's
	// id) cannot be reused: kill what is left of the group.
	var goneErr error
	_ = signalGroup(pgid, syscall.SIGKILL)
	if !waitGroupGone(pgid, time.After(killWait)) {
		goneErr = fmt.Errorf("processes of step %q of job %q (process group %d) still run %s after SIGKILL", step.Name, h.JobID, pgid, killWait)
	}
	e.untrack(h.JobID, pgid)
	waitErr := cmd.Wait()

	outErr, errErr := e.drain(h.JobID, step.Name, stdout.r, stderr.r, outDone, errDone)

	code, codeErr := exitCode(cmd.ProcessState, waitErr)
	switch {
	case codeErr != nil:
		return -1, fmt.Errorf("step %q of job %q: %w", step.Name, h.JobID, codeErr)
	case goneErr != nil:
		return code, goneErr
	case stopped:
		return code, fmt.Errorf("step %q of job %q stopped: %w", step.Name, h.JobID, ctx.Err())
	case outErr != nil || errErr != nil:
		return code, fmt.Errorf("output of step %q of job %q was lost: %w", step.Name, h.JobID, errors.Join(outErr, errErr))
	}
	return code, nil
}

// stop waits for the shell to exit. If ctx ends first it sends SIGTERM to
// the group and, once grace has passed, SIGKILL; processes the shell leaves
// behind get the rest of the grace period. It reports whether it had to
// stop the step and any error waiting for the shell.
func (e *Executor) stop(ctx context.Context, pgid int, grace time.Duration, exited <-chan error) (bool, error) {
	select {
	case err := <-exited:
		return false, err
	case <-ctx.Done():
	}
	_ = signalGroup(pgid, syscall.SIGTERM)
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case err := <-exited:
		waitGroupGone(pgid, timer.C)
		return true, err
	case <-timer.C:
	}
	_ = signalGroup(pgid, syscall.SIGKILL)
	select {
	case err := <-exited:
		return true, err
	case <-time.After(killWait):
		return true, fmt.Errorf("the shell (pid %d) is still running %s after SIGKILL", pgid, killWait)
	}
}

// drain waits for both output copies to end. A process that left the
// step's process group may still hold the pipes: after escapedOutputWait
// they are closed, and what it writes later is lost.
func (e *Executor) drain(jobID, stepName string, outR, errR *os.File, outDone, errDone <-chan error) (error, error) {
	timer := time.NewTimer(escapedOutputWait)
	defer timer.Stop()
	var outErr, errErr error
	for outDone != nil || errDone != nil {
		select {
		case outErr = <-outDone:
			outDone = nil
		case errErr = <-errDone:
			errDone = nil
		case <-timer.C:
			e.logger().Warn("a process that left the step's process group still holds its output; no longer reading it",
				"job", jobID, "step", stepName)
			outR.Close()
			errR.Close()
		}
	}
	outR.Close()
	errR.Close()
	return outErr, errErr
}

// exitCode turns how the shell ended into an exit code: its exit status,
// or 128 + the signal that killed it.
func exitCode(ps *os.ProcessState, waitErr error) (int, error) {
	var ee *exec.ExitError
	if waitErr != nil && !errors.As(waitErr, &ee) {
		return -1, waitErr
	}
	if ps == nil {
		return -1, errors.New("the shell's exit status is unknown")
	}
	ws, ok := ps.Sys().(syscall.WaitStatus)
	switch {
	case !ok:
		return -1, fmt.Errorf("the shell's exit status is unknown (%s)", ps)
	case ws.Exited():
		return ws.ExitStatus(), nil
	case ws.Signaled():
		return 128 + int(ws.Signal()), nil
	default:
		return -1, fmt.Errorf("the shell's exit status is unknown (%s)", ps)
	}
}

// interpreter picks the shell for a step: the step's own, else the job's
// configured one, else bash when installed, else sh. A step for bash runs
// with sh when bash is not installed.
func (e *Executor) interpreter(stepShell, jobShell string) (string, []string, error) {
	want := stepShell
	if want == "" {
		want = jobShell
	}
	switch want {
	case "", "bash":
		if p, err := exec.LookPath("bash"); err == nil {
			return p, []string{"--noprofile", "--norc"}, nil
		}
		if want == "bash" {
			e.logger().Warn("bash is not installed; running a bash script with sh")
		}
	case "sh":
	default:
		return "", nil, fmt.Errorf("the shell executor runs bash and sh scripts, not %q", want)
	}
	p, err := exec.LookPath("sh")
	if err != nil {
		return "", nil, fmt.Errorf("neither bash nor sh is installed (PATH=%s)", os.Getenv("PATH"))
	}
	return p, nil, nil
}

// writeScript writes a step's script to a new file (mode 0700) in dir.
func writeScript(dir, script string) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("creating the directory for the script: %w", err)
	}
	f, err := os.CreateTemp(dir, "step-*.sh")
	if err != nil {
		return "", fmt.Errorf("creating the script file: %w", err)
	}
	_, err = io.WriteString(f, script)
	if err == nil {
		err = f.Chmod(0o700)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("writing the script file: %w", err)
	}
	return f.Name(), nil
}

// allowedEnv keeps the variables of environ whose names are allowed: an
// entry of allow is a name, or a prefix followed by "*".
func allowedEnv(environ, allow []string) []string {
	env := []string{} // not nil: a nil Env would pass the whole environment
	for _, kv := range environ {
		name, _, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		for _, a := range allow {
			prefix, wild := strings.CutSuffix(a, "*")
			if name == a || (wild && strings.HasPrefix(name, prefix)) {
				env = append(env, kv)
				break
			}
		}
	}
	return env
}

type pipe struct{ r, w *os.File }

func newPipe() (pipe, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return pipe{}, fmt.Errorf("creating an output pipe: %w", err)
	}
	return pipe{r: r, w: w}, nil
}

func (p pipe) close() {
	p.r.Close()
	p.w.Close()
}

// copyOutput copies r to w in reads of readSize until r ends or is
// closed. If w fails, the rest is read and dropped, so that the step does
// not block on a full pipe; the first write error is the result.
func copyOutput(r io.Reader, w io.Writer) <-chan error {
	done := make(chan error, 1)
	go func() {
		var werr error
		buf := make([]byte, readSize)
		for {
			n, err := r.Read(buf)
			if n > 0 && werr == nil {
				_, werr = w.Write(buf[:n])
			}
			if err != nil {
				done <- werr
				return
			}
		}
	}()
	return done
}
