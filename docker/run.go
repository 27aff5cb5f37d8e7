package docker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/client"

	"github.com/berthci/berth/internal/stepwrap"
	"github.com/berthci/berth/sdk"
)

const (
	// berthDir holds the steps' scripts and pid files in the job
	// container: a tmpfs, writable by any user (sticky).
	berthDir = "/.berth"
	// escapedOutputWait is how long Run keeps reading a step's output after
	// its shell has exited, for processes that left the step's process
	// group and still hold the output.
	escapedOutputWait = 2 * time.Second
	// killWait bounds how long a step's processes may take to die after
	// SIGKILL before Run reports them as a system failure.
	killWait = 10 * time.Second
	// controlTimeout bounds each engine call made to stop a step, which
	// runs after the step's context has ended.
	controlTimeout = 30 * time.Second
)

// Run implements sdk.Executor. The step runs with an exec in the job
// container under the wrapper (step.sh), which reads the script from the
// exec's stdin into berthDir and runs it with the step's shell in the
// build directory; stdout and stderr are demultiplexed into out. The
// step's processes form a process group; when the script's shell exits,
// whatever is left of the group is killed. Cancelling ctx sends SIGTERM to
// the group and SIGKILL after step.GracePeriod (each through an exec of
// the wrapper); Run returns once no process of the group is left. A
// process that left the group on purpose (setsid, a daemon) is not
// waited for: its output is read for escapedOutputWait more, and it ends
// with the job's container. A step that exits with 137 after the
// container hit its memory limit gets a line on stderr naming the limit.
func (e *Executor) Run(ctx context.Context, h sdk.Handle, step sdk.Step, out sdk.Output) (int, error) {
	st, err := decodeState(h)
	if err != nil {
		return -1, err
	}
	c, err := e.engine(st.Host)
	if err != nil {
		return -1, err
	}
	shell := step.Shell
	switch shell {
	case "":
		shell = "sh"
	case "sh", "bash":
	default:
		return -1, fmt.Errorf("step %q of job %q is written for %q; the docker executor runs sh and bash scripts", step.Name, h.JobID, shell)
	}
	id := randomID()
	scriptPath := berthDir + "/" + id + ".sh"
	pidPath := berthDir + "/" + id + ".pid"
	doing := fmt.Sprintf("step %q of job %q", step.Name, h.JobID)
	started := time.Now()
	ex, err := c.ExecCreate(ctx, st.Container, client.ExecCreateOptions{
		AttachStdin: true, AttachStdout: true, AttachStderr: true,
		WorkingDir: st.BuildDir,
		// The engine reports a job container's OOM kills itself (see
		// run's exit handling), so the wrapper gets no OOM hint.
		Cmd: stepwrap.Command("run", shell, scriptPath, pidPath),
	})
	if err != nil {
		return -1, e.containerError(ctx, st, doing+": creating the exec", err)
	}
	// The stream must outlive ctx: the engine answers a closed exec stream
	// by signalling only the step's first process, and Run stops the step
	// itself, group and all.
	attachCtx, cancelAttach := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelAttach()
	att, err := c.ExecAttach(attachCtx, ex.ID, client.ExecAttachOptions{})
	if err != nil {
		return -1, e.containerError(ctx, st, doing+": starting the exec", err)
	}
	defer att.Close()
	// The wrapper saves its standard input as the script file.
	go func() {
		_, _ = io.WriteString(att.Conn, step.Script)
		_ = att.CloseWrite()
	}()
	streamDone := make(chan error, 1)
	go func() {
		_, err := stdcopy.StdCopy(out.Stdout, out.Stderr, att.Reader)
		streamDone <- err
	}()

	r := &stepRun{e: e, c: c, st: st, execID: ex.ID, pidPath: pidPath, att: att, streamDone: streamDone, name: step.Name, jobID: h.JobID}
	stopped, stopErr := r.wait(ctx, step.GracePeriod)

	code, err := r.exitCode()
	switch {
	case err != nil:
		return -1, e.containerError(context.WithoutCancel(ctx), st, doing, err)
	case stopErr != nil:
		return code, stopErr
	case stopped:
		return code, fmt.Errorf("%s stopped: %w", doing, context.Cause(ctx))
	case r.streamErr != nil:
		return code, fmt.Errorf("%s: reading its output: %w", doing, r.streamErr)
	}
	if code == 128+9 {
		if limit, oom := e.outOfMemory(ctx, c, st, started); oom {
			fmt.Fprintf(out.Stderr, "berth: the step was killed because the job's container ran out of memory: %s\n", limit)
		}
	}
	return code, nil
}

// stepRun follows one running step.
type stepRun struct {
	e          *Executor
	c          *client.Client
	st         jobState
	execID     string
	pidPath    string
	att        client.ExecAttachResult
	streamDone chan error
	streamErr  error
	done       bool
	name       string
	jobID      string
}

// wait waits for the step's output to end. When ctx ends first it stops
// the step: SIGTERM to its group, SIGKILL after grace. It reports whether
// it stopped the step, and an error when the step's processes could not
// all be killed.
func (r *stepRun) wait(ctx context.Context, grace time.Duration) (bool, error) {
	poll := time.NewTimer(time.Second)
	defer poll.Stop()
	interval := time.Second
	for {
		select {
		case r.streamErr = <-r.streamDone:
			r.done = true
			if r.streamErr != nil {
				// Nobody reads the step's output any more: it would block
				// writing. End it.
				r.signal("KILL")
			}
			return false, nil
		case <-poll.C:
			// The wrapper has exited, yet the output goes on: a process
			// that left the step's group holds it.
			if !r.running() {
				r.drainEscaped()
				return false, nil
			}
			interval = min(2*interval, 5*time.Second)
			poll.Reset(interval)
		case <-ctx.Done():
			return true, r.stop(grace)
		}
	}
}

// stop sends SIGTERM to the step's group, waits up to grace for the step
// to end, then SIGKILLs the group until nothing of it is left.
func (r *stepRun) stop(grace time.Duration) error {
	r.signal("TERM")
	if r.waitStream(grace) {
		return nil
	}
	deadline := time.Now().Add(killWait)
	for time.Now().Before(deadline) {
		// Each round reads the pid file again: the step may have been
		// too young to have written it at the first.
		r.signal("KILL")
		if r.waitStream(time.Second) {
			return nil
		}
		if !r.running() {
			r.drainEscaped()
			return nil
		}
	}
	r.att.Close()
	<-r.streamDone
	r.done = true
	return fmt.Errorf("step %q of job %q: its processes still run %s after SIGKILL", r.name, r.jobID, killWait)
}

// waitStream waits up to d for the output to end.
func (r *stepRun) waitStream(d time.Duration) bool {
	if r.done {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case r.streamErr = <-r.streamDone:
		r.done = true
		return true
	case <-t.C:
		return false
	}
}

// drainEscaped gives processes that left the step's group a moment to
// finish writing, then stops reading their output.
func (r *stepRun) drainEscaped() {
	if r.waitStream(escapedOutputWait) {
		return
	}
	r.e.logger().Warn("a process that left the step's process group still holds its output; no longer reading it",
		"job", r.jobID, "step", r.name)
	r.att.Close()
	<-r.streamDone
	r.done = true
}

// signal sends sig to the step's process group through an exec of the
// wrapper, as root so that it reaches processes of any user.
func (r *stepRun) signal(sig string) {
	ctx, cancel := context.WithTimeout(context.Background(), controlTimeout)
	defer cancel()
	code, err := runExec(ctx, r.c, r.st.Container, stepwrap.Command("signal", sig, r.pidPath), "0", io.Discard)
	if err != nil || code != 0 {
		r.e.logger().Warn("signalling a step", "job", r.jobID, "step", r.name, "signal", sig, "exit_code", code, "error", err)
	}
}

// running says whether the step's wrapper still runs (an error counts as
// running: it is decided by the output then).
func (r *stepRun) running() bool {
	ctx, cancel := context.WithTimeout(context.Background(), controlTimeout)
	defer cancel()
	res, err := r.c.ExecInspect(ctx, r.execID, client.ExecInspectOptions{})
	return err != nil || res.Running
}

// exitCode returns the wrapper's exit code. The engine may record it a
// moment after the output ended.
func (r *stepRun) exitCode() (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), controlTimeout)
	defer cancel()
	delay := time.Millisecond
	for {
		res, err := r.c.ExecInspect(ctx, r.execID, client.ExecInspectOptions{})
		if err != nil {
			return -1, fmt.Errorf("reading the exit code: %w", err)
		}
		if !res.Running {
			return res.ExitCode, nil
		}
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("the step's output ended but the engine still reports it running after %s", controlTimeout)
		case <-time.After(delay):
		}
		delay = min(2*delay, 100*time.Millisecond)
	}
}

// runExec runs cmd in the container as user and returns its exit code;
// its stdout and stderr go to w.
func runExec(ctx context.Context, c *client.Client, containerID string, cmd []string, user string, w io.Writer) (int, error) {
	ex, err := c.ExecCreate(ctx, containerID, client.ExecCreateOptions{
		AttachStdout: true, AttachStderr: true, Cmd: cmd, User: user,
	})
	if err != nil {
		return -1, err
	}
	att, err := c.ExecAttach(ctx, ex.ID, client.ExecAttachOptions{})
	if err != nil {
		return -1, err
	}
	defer att.Close()
	if _, err := stdcopy.StdCopy(w, w, att.Reader); err != nil {
		return -1, err
	}
	for {
		res, err := c.ExecInspect(ctx, ex.ID, client.ExecInspectOptions{})
		if err != nil {
			return -1, err
		}
		if !res.Running {
			return res.ExitCode, nil
		}
		select {
		case <-ctx.Done():
			return -1, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func randomID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// outOfMemory says whether the engine reported the job container out of
// memory since the step started, and words the limit.
func (e *Executor) outOfMemory(ctx context.Context, c *client.Client, st jobState, since time.Time) (string, bool) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	since = since.Add(-time.Second)
	until := time.Now().Add(200 * time.Millisecond)
	res := c.Events(ctx, client.EventsListOptions{
		Since:   strconv.FormatInt(since.Unix(), 10) + "." + fmt.Sprintf("%09d", since.Nanosecond()),
		Until:   strconv.FormatInt(until.Unix(), 10) + "." + fmt.Sprintf("%09d", until.Nanosecond()),
		Filters: make(client.Filters).Add("type", "container").Add("container", st.Container).Add("event", "oom"),
	})
	for {
		select {
		case m := <-res.Messages:
			if string(m.Action) == "oom" {
				if st.Memory > 0 {
					return fmt.Sprintf("its memory limit is %s (setting \"memory\" of [runners.docker])", sdk.Size(st.Memory)), true
				}
				return "it has no memory limit, so the machine itself ran out", true
			}
		case err := <-res.Err:
			if err != nil && !errors.Is(err, io.EOF) {
				e.logger().Debug("reading the engine's events", "error", err)
			}
			return "", false
		}
	}
}
