//go:build linux

package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/berthci/berth/lambda/internal/proctree"
	"github.com/berthci/berth/lambda/protocol"
)

// stepEnv is where a step runs.
type stepEnv struct {
	dir     string // build directory
	scripts string // directory for script files
	env     []string
	index   int
}

// runStep runs one step's script and reports how it ended. The step is
// stopped (SIGTERM to its process group, SIGKILL after its grace period)
// at its timeout or when the invocation reaches t.stop; whatever it leaves
// running is killed when its shell exits.
func runStep(st protocol.Step, se stepEnv, t timing, stdout, stderr *capture, log *slog.Logger) protocol.StepResult {
	fail := func(err error) protocol.StepResult {
		return protocol.StepResult{ExitCode: -1, Error: fmt.Sprintf("step %q: %v", st.Name, err)}
	}
	shell, err := interpreter(st.Shell)
	if err != nil {
		return fail(err)
	}
	script := filepath.Join(se.scripts, "step-"+strconv.Itoa(se.index)+".sh")
	if err := os.WriteFile(script, []byte(st.Script), 0o700); err != nil {
		return fail(fmt.Errorf("writing the script file: %w", err))
	}
	defer os.Remove(script)

	outR, outW, err := os.Pipe()
	if err != nil {
		return fail(fmt.Errorf("creating an output pipe: %w", err))
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return fail(fmt.Errorf("creating an output pipe: %w", err))
	}
	cmd := &exec.Cmd{
		Path:        shell,
		Args:        []string{shell, script},
		Dir:         se.dir,
		Env:         se.env,
		Stdout:      outW,
		Stderr:      errW,
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
	}
	started := time.Now()
	err = cmd.Start()
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return fail(fmt.Errorf("starting %s: %w", shell, err))
	}
	pgid := cmd.Process.Pid
	outDone := copyTo(stdout, outR)
	errDone := copyTo(stderr, errR)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	// When to stop the step, and why.
	stopAt, byDeadline := t.stop, true
	if st.TimeoutMS > 0 {
		if at := started.Add(time.Duration(st.TimeoutMS) * time.Millisecond); at.Before(stopAt) {
			stopAt, byDeadline = at, false
		}
	}
	var r protocol.StepResult
	var waitErr error
	reaped := true
	timer := time.NewTimer(time.Until(stopAt))
	select {
	case waitErr = <-exited:
		timer.Stop()
	case <-timer.C:
		r.TimedOut, r.Deadline = true, byDeadline
		if byDeadline {
			stderr.note(fmt.Sprintf("[berth] job stopped: the Lambda invocation ends in %s; later steps do not run (the function stops jobs that long before its timeout, so that it can still answer)\n",
				time.Until(t.deadline).Round(100*time.Millisecond)))
		}
		reaped, waitErr = stop(pgid, time.Duration(st.GraceMS)*time.Millisecond, t.kill, exited)
	}
	// The shell has ended: kill what it left behind, in its group and
	// below this process (orphans come to us: we are a subreaper).
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	reap := proctree.ReapOrphans
	if !reaped {
		reap = nil // the shell's status is cmd.Wait's to collect
	}
	if err := proctree.KillBelow(os.Getpid(), killWait, reap); err != nil {
		log.Warn("processes of a step survive it", "step", st.Name, "error", err)
	}
	drain(outR, errR, outDone, errDone)

	if !reaped {
		return fail(waitErr)
	}
	code, err := exitCode(cmd.ProcessState, waitErr)
	if err != nil {
		return fail(err)
	}
	r.ExitCode = code
	return r
}

// stop sends SIGTERM to the group, then SIGKILL once grace has passed or
// at kill, whichever comes first, and waits for the shell. It reports
// whether the shell ended.
func stop(pgid int, grace time.Duration, kill time.Time, exited <-chan error) (bool, error) {
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	if at := time.Now().Add(grace); at.Before(kill) {
		kill = at
	}
	timer := time.NewTimer(time.Until(kill))
	defer timer.Stop()
	select {
	case err := <-exited:
		return true, err
	case <-timer.C:
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	select {
	case err := <-exited:
		return true, err
	case <-time.After(killWait):
		return false, fmt.Errorf("the shell (pid %d) still runs %s after SIGKILL", pgid, killWait)
	}
}

// interpreter is the program that runs a step's script.
func interpreter(shell string) (string, error) {
	switch shell {
	case "", "sh":
		return "/bin/sh", nil
	case "bash":
		p, err := exec.LookPath("bash")
		if err != nil {
			return "", errors.New("bash is not installed in the function's runtime; run sh scripts")
		}
		return p, nil
	}
	return "", fmt.Errorf("the berth function runs sh and bash scripts, not %q", shell)
}

func copyTo(w io.Writer, r io.Reader) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(w, r)
	}()
	return done
}

// drain waits for both output copies to end; after outputWait it closes
// the pipes (a process that escaped may still hold them).
func drain(outR, errR *os.File, outDone, errDone <-chan struct{}) {
	timer := time.NewTimer(outputWait)
	defer timer.Stop()
	for outDone != nil || errDone != nil {
		select {
		case <-outDone:
			outDone = nil
		case <-errDone:
			errDone = nil
		case <-timer.C:
			outR.Close()
			errR.Close()
		}
	}
	outR.Close()
	errR.Close()
}

// exitCode is the shell's exit status, or 128 + the signal that killed it.
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
	}
	return -1, fmt.Errorf("the shell's exit status is unknown (%s)", ps)
}
