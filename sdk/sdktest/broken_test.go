package sdktest

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/shell"
)

// The suite must fail executors that break the contract. Each defect below
// wraps the real shell executor with one fault; the suite, run in-process
// under a recorder, must fail the subtests named.

// dropByte drops the byte at offset at of a stream.
type dropByte struct {
	w  io.Writer
	at int64
	n  int64
}

func (d *dropByte) Write(p []byte) (int, error) {
	start := d.n
	d.n += int64(len(p))
	if d.at < start || d.at >= d.n {
		return d.w.Write(p)
	}
	k := d.at - start
	q := append(slices.Clone(p[:k]), p[k+1:]...)
	if _, err := d.w.Write(q); err != nil {
		return 0, err
	}
	return len(p), nil
}

// flipByte changes the byte at offset at of a stream.
type flipByte struct {
	w  io.Writer
	at int64
	n  int64
}

func (f *flipByte) Write(p []byte) (int, error) {
	start := f.n
	f.n += int64(len(p))
	if f.at >= start && f.at < f.n {
		p = slices.Clone(p)
		p[f.at-start] ^= 0x20
	}
	return f.w.Write(p)
}

// lineWriter passes on whole lines only, and never the last one if it has
// no newline: output handled as "lines of text".
type lineWriter struct {
	w       io.Writer
	pending []byte
}

func (l *lineWriter) Write(p []byte) (int, error) {
	l.pending = append(l.pending, p...)
	if i := slices.Index(l.pending, '\n'); i >= 0 {
		j := len(l.pending)
		for l.pending[j-1] != '\n' {
			j--
		}
		if _, err := l.w.Write(l.pending[:j]); err != nil {
			return 0, err
		}
		l.pending = append(l.pending[:0], l.pending[j:]...)
	}
	return len(p), nil
}

// cutter passes on the first left bytes of a stream and counts the rest.
type cutter struct {
	w       io.Writer
	left    int64
	dropped int64
}

func (c *cutter) Write(p []byte) (int, error) {
	k := min(int64(len(p)), c.left)
	c.left -= k
	c.dropped += int64(len(p)) - k
	if _, err := c.w.Write(p[:k]); err != nil {
		return 0, err
	}
	return len(p), nil
}

// gate stops passing writes on once closed.
type gate struct {
	mu     sync.Mutex
	w      io.Writer
	closed bool
}

func (g *gate) Write(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return len(p), nil
	}
	return g.w.Write(p)
}

func (g *gate) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

// broken is the shell executor with some methods replaced.
type broken struct {
	sdk.Executor
	run       func(ctx context.Context, h sdk.Handle, step sdk.Step, out sdk.Output) (int, error)
	prepare   func(ctx context.Context, job sdk.Job) (sdk.Handle, error)
	cleanup   func(ctx context.Context, h sdk.Handle) error
	configure func(ctx context.Context, settings map[string]any) error
	// handle changes a handle before it goes to the shell executor.
	handle func(sdk.Handle) sdk.Handle
}

func (b *broken) h(h sdk.Handle) sdk.Handle {
	if b.handle != nil {
		return b.handle(h)
	}
	return h
}

func (b *broken) Run(ctx context.Context, h sdk.Handle, step sdk.Step, out sdk.Output) (int, error) {
	if b.run != nil {
		return b.run(ctx, b.h(h), step, out)
	}
	return b.Executor.Run(ctx, b.h(h), step, out)
}

func (b *broken) Prepare(ctx context.Context, job sdk.Job) (sdk.Handle, error) {
	if b.prepare != nil {
		return b.prepare(ctx, job)
	}
	return b.Executor.Prepare(ctx, job)
}

func (b *broken) Cleanup(ctx context.Context, h sdk.Handle) error {
	if b.cleanup != nil {
		return b.cleanup(ctx, b.h(h))
	}
	return b.Executor.Cleanup(ctx, b.h(h))
}

func (b *broken) Configure(ctx context.Context, settings map[string]any) error {
	if b.configure != nil {
		return b.configure(ctx, settings)
	}
	return b.Executor.Configure(ctx, settings)
}

func (b *broken) Upload(ctx context.Context, h sdk.Handle, dir string, r io.Reader) error {
	return b.Executor.Upload(ctx, b.h(h), dir, r)
}

func (b *broken) Download(ctx context.Context, h sdk.Handle, paths []string, w io.Writer) error {
	return b.Executor.Download(ctx, b.h(h), paths, w)
}

// defects make broken executors out of a real one.
var defects = []struct {
	name string
	// only are the suite's subtests to run; wantFailed the tests among
	// them that must fail.
	only, wantFailed []string
	wrap             func(e *shell.Executor) sdk.Executor
	opts             []Option
}{
	{
		name: "drops a byte of big output", only: []string{"big_output"}, wantFailed: []string{"big_output"},
		wrap: func(e *shell.Executor) sdk.Executor {
			return &broken{Executor: e, run: func(ctx context.Context, h sdk.Handle, s sdk.Step, out sdk.Output) (int, error) {
				out.Stdout = &dropByte{w: out.Stdout, at: 50_000_000}
				return e.Run(ctx, h, s, out)
			}}
		},
	},
	{
		name: "corrupts a byte of big output", only: []string{"big_output"}, wantFailed: []string{"big_output"},
		wrap: func(e *shell.Executor) sdk.Executor {
			return &broken{Executor: e, run: func(ctx context.Context, h sdk.Handle, s sdk.Step, out sdk.Output) (int, error) {
				out.Stdout = &flipByte{w: out.Stdout, at: 30_000_000}
				return e.Run(ctx, h, s, out)
			}}
		},
	},
	{
		name: "cuts output without saying so", only: []string{"big_output"}, wantFailed: []string{"big_output"},
		wrap: func(e *shell.Executor) sdk.Executor {
			return &broken{Executor: e, run: func(ctx context.Context, h sdk.Handle, s sdk.Step, out sdk.Output) (int, error) {
				out.Stdout = &cutter{w: out.Stdout, left: 8 << 20}
				return e.Run(ctx, h, s, out)
			}}
		},
		opts: []Option{WithOutputLimit(8 << 20)},
	},
	{
		name: "swaps stdout and stderr", only: []string{"stdout_stderr"}, wantFailed: []string{"stdout_stderr"},
		wrap: func(e *shell.Executor) sdk.Executor {
			return &broken{Executor: e, run: func(ctx context.Context, h sdk.Handle, s sdk.Step, out sdk.Output) (int, error) {
				return e.Run(ctx, h, s, sdk.Output{Stdout: out.Stderr, Stderr: out.Stdout})
			}}
		},
	},
	{
		name: "output as lines of text", only: []string{"variables"}, wantFailed: []string{"variables/bash", "variables/sh"},
		wrap: func(e *shell.Executor) sdk.Executor {
			return &broken{Executor: e, run: func(ctx context.Context, h sdk.Handle, s sdk.Step, out sdk.Output) (int, error) {
				return e.Run(ctx, h, s, sdk.Output{Stdout: &lineWriter{w: out.Stdout}, Stderr: out.Stderr})
			}}
		},
	},
	{
		name: "always exits 0", only: []string{"exit_codes"},
		wantFailed: []string{"exit_codes/bash/1", "exit_codes/bash/7", "exit_codes/bash/SIGKILL", "exit_codes/sh/7"},
		wrap: func(e *shell.Executor) sdk.Executor {
			return &broken{Executor: e, run: func(ctx context.Context, h sdk.Handle, s sdk.Step, out sdk.Output) (int, error) {
				_, err := e.Run(ctx, h, s, out)
				return 0, err
			}}
		},
	},
	{
		name: "returns on cancel, leaving the script running", only: []string{"cancel"},
		wantFailed: []string{"cancel/term_trapped", "cancel/term_trapped/no_process_left", "cancel/term_ignored", "cancel/term_ignored/no_process_left"},
		wrap: func(e *shell.Executor) sdk.Executor {
			return &broken{Executor: e, run: func(ctx context.Context, h sdk.Handle, s sdk.Step, out sdk.Output) (int, error) {
				type result struct {
					code int
					err  error
				}
				stdout, stderr := &gate{w: out.Stdout}, &gate{w: out.Stderr}
				done := make(chan result, 1)
				go func() {
					code, err := e.Run(context.WithoutCancel(ctx), h, s, sdk.Output{Stdout: stdout, Stderr: stderr})
					done <- result{code, err}
				}()
				select {
				case r := <-done:
					return r.code, r.err
				case <-ctx.Done():
					stdout.close()
					stderr.close()
					return -1, ctx.Err()
				}
			}}
		},
	},
	{
		name: "runs scripts with job control", only: []string{"background_process"},
		wantFailed: []string{"background_process/no_process_left"},
		wrap: func(e *shell.Executor) sdk.Executor {
			return &broken{Executor: e, run: func(ctx context.Context, h sdk.Handle, s sdk.Step, out sdk.Output) (int, error) {
				// Background jobs get process groups of their own and
				// escape the step's.
				s.Script = "set -m\n" + s.Script
				return e.Run(ctx, h, s, out)
			}}
		},
	},
	{
		name: "ignores cancel", only: []string{"cancel/term_ignored"},
		wantFailed: []string{"cancel/term_ignored"},
		wrap: func(e *shell.Executor) sdk.Executor {
			return &broken{Executor: e, run: func(ctx context.Context, h sdk.Handle, s sdk.Step, out sdk.Output) (int, error) {
				return e.Run(context.WithoutCancel(ctx), h, s, out)
			}}
		},
		opts: []Option{WithGracePeriod(time.Second)},
	},
	{
		name: "kills without a grace period", only: []string{"cancel"}, wantFailed: []string{"cancel/term_trapped"},
		wrap: func(e *shell.Executor) sdk.Executor {
			return &broken{Executor: e, run: func(ctx context.Context, h sdk.Handle, s sdk.Step, out sdk.Output) (int, error) {
				s.GracePeriod = 0
				return e.Run(ctx, h, s, out)
			}}
		},
	},
	{
		name: "one build directory for all jobs", only: []string{"isolation"}, wantFailed: []string{"isolation"},
		wrap: func(e *shell.Executor) sdk.Executor {
			shared := func(h sdk.Handle) sdk.Handle { h.JobID = "shared"; return h }
			return &broken{Executor: e, handle: shared, prepare: func(ctx context.Context, job sdk.Job) (sdk.Handle, error) {
				id := job.ID
				job.ID = "shared"
				h, err := e.Prepare(ctx, job)
				h.JobID = id
				return h, err
			}}
		},
	},
	{
		name: "Cleanup fails the second time", only: []string{"cleanup"}, wantFailed: []string{"cleanup/twice"},
		wrap: func(e *shell.Executor) sdk.Executor {
			var mu sync.Mutex
			done := map[string]bool{}
			return &broken{Executor: e, cleanup: func(ctx context.Context, h sdk.Handle) error {
				mu.Lock()
				again := done[h.JobID]
				done[h.JobID] = true
				mu.Unlock()
				if again {
					return fmt.Errorf("job %q is cleaned up already", h.JobID)
				}
				return e.Cleanup(ctx, h)
			}}
		},
	},
	{
		name: "accepts unknown settings", only: []string{"config"}, wantFailed: []string{"config/unknown_key"},
		wrap: func(e *shell.Executor) sdk.Executor {
			return &broken{Executor: e, configure: func(ctx context.Context, settings map[string]any) error {
				info, err := e.Info(ctx)
				if err != nil {
					return err
				}
				known := map[string]any{}
				for _, f := range info.Config {
					if v, ok := settings[f.Name]; ok {
						known[f.Name] = v
					}
				}
				return e.Configure(ctx, known)
			}}
		},
	},
}

func shellFactory(t *testing.T) func(suiteT) sdk.Executor {
	return func(suiteT) sdk.Executor { return shell.New() }
}

func suiteOptions(t *testing.T, extra ...Option) []Option {
	return append([]Option{WithSettings(map[string]any{"builds_dir": t.TempDir()}), LocalProcesses()}, extra...)
}

func TestSuiteFailsBrokenExecutors(t *testing.T) {
	for _, d := range defects {
		t.Run(d.name, func(t *testing.T) {
			rec := newRecorder(t)
			run(rec, func(suiteT) sdk.Executor { return d.wrap(shell.New()) }, suiteOptions(t, append(d.opts, only(d.only...))...)...)
			rec.finish()
			failed := rec.failedTests()
			for _, want := range d.wantFailed {
				if !slices.Contains(failed, want) {
					t.Errorf("the suite did not fail %s; it failed %q", want, failed)
				}
			}
			t.Logf("what the suite reported:\n%s", rec)
		})
	}
}

// An executor that declares an output limit and cuts a longer stream with
// one line saying so passes the big-output test.
func TestSuiteAcceptsDeclaredCut(t *testing.T) {
	rec := newRecorder(t)
	wrap := func(e *shell.Executor) sdk.Executor {
		return &broken{Executor: e, run: func(ctx context.Context, h sdk.Handle, s sdk.Step, out sdk.Output) (int, error) {
			c := &cutter{w: out.Stdout, left: 8 << 20}
			out.Stdout = c
			code, err := e.Run(ctx, h, s, out)
			if c.dropped > 0 {
				fmt.Fprintf(c.w, "\n[cut] %d bytes dropped\n", c.dropped)
			}
			return code, err
		}}
	}
	run(rec, func(suiteT) sdk.Executor { return wrap(shell.New()) }, suiteOptions(t, WithOutputLimit(8<<20), only("big_output"))...)
	rec.finish()
	if failed := rec.failedTests(); len(failed) > 0 {
		t.Errorf("the suite failed an executor that cuts its output as declared: %q\n%s", failed, rec)
	}
}

// The recorder itself must not invent failures: the real shell executor
// passes the whole suite under it.
func TestSuitePassesShellUnderRecorder(t *testing.T) {
	rec := newRecorder(t)
	run(rec, shellFactory(t), suiteOptions(t)...)
	rec.finish()
	if failed := rec.failedTests(); len(failed) > 0 || rec.Failed() {
		t.Errorf("the suite failed the shell executor under the recorder: %q\n%s", failed, rec)
	}
}
