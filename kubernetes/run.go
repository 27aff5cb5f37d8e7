package kubernetes

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/berthci/berth/internal/stepwrap"
	"github.com/berthci/berth/sdk"
)

const (
	// killWait bounds how long a step's processes may take to die after
	// SIGKILL before Run reports a system failure.
	killWait = 15 * time.Second
	// controlTimeout bounds each API call made to stop a step or to look
	// at the pod, which run after the step's context has ended.
	controlTimeout = 30 * time.Second
	// settleWait is how long a step whose container died waits for the
	// pod's status to say why (eviction, deletion, out of memory).
	settleWait = 30 * time.Second
	// resumeAttempts bounds how often in a row a step's output is resumed
	// after its exec's connection broke without getting further.
	resumeAttempts = 5
	// outputDir, below builds_dir (on the build volume, not in memory),
	// holds the running step's stdout, stderr and exit status.
	outputDir = ".berth-output"
)

// oomHint ends the wrapper's line about a step the kernel killed for lack
// of memory.
const oomHint = `its limit: setting "memory_limit" of [runners.kubernetes]`

type execResult struct {
	code int
	err  error
}

// Run implements sdk.Executor. The step runs with an exec in the build
// container under the wrapper (step.sh, mode start): the script comes on
// the exec's stdin, stdout and stderr go to out apart, and the exit code is
// the exec's. The step itself writes into files on the build volume that
// the exec follows, so that a broken connection (API servers and proxies
// do drop long exec streams) loses nothing: the same start again resumes
// from the bytes received, and starts the step only if no earlier exec did
// (a break while the script came is harmless). Cancelling ctx sends SIGTERM to the step's process group and
// SIGKILL after step.GracePeriod (each through an exec of the wrapper);
// Run returns once the step's exec has ended. A step whose pod failed
// (evicted, deleted, out of memory) is a system failure naming the reason.
func (e *Executor) Run(ctx context.Context, h sdk.Handle, step sdk.Step, out sdk.Output) (int, error) {
	st, err := decodeState(h)
	if err != nil {
		return -1, err
	}
	_, c, err := e.current()
	if err != nil {
		return -1, err
	}
	shell := step.Shell
	switch shell {
	case "":
		shell = "sh"
	case "sh", "bash":
	default:
		return -1, fmt.Errorf("step %q of job %q is written for %q; the kubernetes executor runs sh and bash scripts", step.Name, h.JobID, shell)
	}
	doing := fmt.Sprintf("step %q of job %q", step.Name, h.JobID)
	id := randomID()
	pidFile := stepsDir + "/" + id + ".pid"
	outBase := path.Join(path.Dir(st.BuildDir), outputDir, id)
	// A broken exec is followed by the same start again, with the byte
	// counts received: the wrapper starts the step only once (see step.sh).
	start := func(outBytes, errBytes int64) []string {
		return stepwrap.CommandFromEnv("start", shell, stepsDir+"/"+id+".sh", pidFile, st.BuildDir, oomHint, strconv.Itoa(len(step.Script)), outBase,
			strconv.FormatInt(outBytes, 10), strconv.FormatInt(errBytes, 10))
	}

	// The stream outlives ctx: a cancel stops the step's processes, and
	// the exit code still comes from the exec.
	streamCtx, stopStream := context.WithCancel(context.WithoutCancel(ctx))
	defer stopStream()
	done := make(chan execResult, 1)
	go func() {
		stdout, stderr := &countingWriter{w: out.Stdout}, &countingWriter{w: out.Stderr}
		code, err := c.exec(streamCtx, st.Namespace, st.Pod, buildContainer, start(0, 0),
			execIO{stdin: strings.NewReader(step.Script), stdout: stdout, stderr: stderr})
		var rt retries
		for err != nil && streamCtx.Err() == nil {
			if perr := e.podFailure(c, st, false); perr != nil {
				break
			}
			if !rt.again(streamCtx, stdout.n+stderr.n) {
				break
			}
			e.logger().Warn("the exec of a step broke; resuming its output", "pod", st.Namespace+"/"+st.Pod, "step", step.Name,
				"stdout_bytes", stdout.n, "stderr_bytes", stderr.n, "attempt", rt.attempt, "error", err)
			code, err = c.exec(streamCtx, st.Namespace, st.Pod, buildContainer, start(stdout.n, stderr.n),
				execIO{stdin: strings.NewReader(step.Script), stdout: stdout, stderr: stderr})
		}
		done <- execResult{code, err}
	}()

	var res execResult
	stopped := false
	select {
	case res = <-done:
	case <-ctx.Done():
		stopped = true
		var stopErr error
		res, stopErr = e.stop(c, st, pidFile, step.GracePeriod, done, stopStream)
		if stopErr != nil {
			return -1, fmt.Errorf("%s: %w", doing, stopErr)
		}
	}
	if res.err != nil || res.code != 0 {
		// The pod may be why the exec ended: a deleted or evicted pod's
		// container is killed, and its exec reports 137 or breaks.
		if perr := e.podFailure(c, st, res.err != nil || res.code >= 128); perr != nil {
			return -1, fmt.Errorf("%s: %w", doing, perr)
		}
	}
	switch {
	case res.err != nil:
		return -1, fmt.Errorf("%s: the exec in pod %s/%s failed: %w", doing, st.Namespace, st.Pod, res.err)
	case stopped:
		return res.code, fmt.Errorf("%s stopped: %w", doing, context.Cause(ctx))
	}
	return res.code, nil
}

// stop sends SIGTERM to the step's group, waits up to grace for the exec
// to end, then SIGKILLs the group until the exec ends.
func (e *Executor) stop(c *cluster, st jobState, pidFile string, grace time.Duration, done <-chan execResult, stopStream func()) (execResult, error) {
	e.signal(c, st, "TERM", pidFile)
	t := time.NewTimer(grace)
	select {
	case r := <-done:
		t.Stop()
		return r, nil
	case <-t.C:
	}
	deadline := time.NewTimer(killWait)
	defer deadline.Stop()
	for {
		// Each round reads the pid file again: the step may have been too
		// young to have written it the first time.
		e.signal(c, st, "KILL", pidFile)
		retry := time.NewTimer(time.Second)
		select {
		case r := <-done:
			retry.Stop()
			return r, nil
		case <-deadline.C:
			retry.Stop()
			stopStream()
			<-done
			return execResult{}, fmt.Errorf("its processes still run %s after SIGKILL", killWait)
		case <-retry.C:
		}
	}
}

// signal sends sig to a step's process group with an exec of the wrapper.
func (e *Executor) signal(c *cluster, st jobState, sig, pidFile string) {
	ctx, cancel := context.WithTimeout(context.Background(), controlTimeout)
	defer cancel()
	code, err := c.exec(ctx, st.Namespace, st.Pod, buildContainer, stepwrap.CommandFromEnv("signal", sig, pidFile), execIO{stdout: io.Discard, stderr: io.Discard})
	if err != nil || code != 0 {
		e.logger().Warn("signalling a step", "pod", st.Namespace+"/"+st.Pod, "signal", sig, "exit_code", code, "error", err)
	}
}

// podFailure reads the pod back and describes why it no longer runs steps
// (nil when it still does, or when it cannot be read).
//
// With killed set (the exec broke, or the step died of a signal), a pod
// that still looks fine is asked whether its build container runs: kubelet
// kills an evicted pod's containers before it writes why into the pod's
// status, so the reason is waited for (up to settleWait) when it does not.
func (e *Executor) podFailure(c *cluster, st jobState, killed bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), controlTimeout)
	defer cancel()
	if err := c.podGone(ctx, st); err != nil || !killed {
		return err
	}
	code, probeErr := c.exec(ctx, st.Namespace, st.Pod, buildContainer, []string{"true"}, execIO{stdout: io.Discard})
	if probeErr == nil && code == 0 {
		return nil
	}
	wait, stopWait := context.WithTimeout(context.Background(), settleWait)
	defer stopWait()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		if err := c.podGone(wait, st); err != nil {
			return err
		}
		select {
		case <-wait.Done():
			if probeErr == nil {
				probeErr = fmt.Errorf("a command in it exited %d", code)
			}
			return fmt.Errorf("the build container of pod %s/%s no longer runs commands (%v), and the pod does not say why after %s", st.Namespace, st.Pod, probeErr, settleWait)
		case <-tick.C:
		}
	}
}

// countingWriter counts the bytes written through it: where a resumed
// exec takes a stream up again.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func randomID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
