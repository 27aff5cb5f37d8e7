// Package trace builds a job's trace (its log as GitLab shows it): secrets
// masked, the size capped, and collapsible sections marked. Masking and the
// limit live here, in the host, so that no executor can forget them.
package trace

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultLimit is the trace size limit when Options.Limit is zero: 4 MiB,
// GitLab Runner's default output_limit.
const DefaultLimit = 4 << 20

// ErrClosed is returned for writes to a Trace after Close.
var ErrClosed = errors.New("the job trace is already closed")

// Options configure a Trace.
type Options struct {
	// Secrets are masked wherever they appear (see Masker).
	Secrets []string
	// Limit caps the bytes of output kept (see Limit): 0 means
	// DefaultLimit, a negative value means no limit.
	Limit int64
	// Now gives the time for section markers; nil means time.Now.
	Now func() time.Time
}

// Trace is one job's log. Every write, from the stdout and stderr copiers
// running at the same time and from the host's own messages, goes through
// one mutex, then the Masker, then the Limit, to the sink. A Trace is safe
// for concurrent use. The first error of the sink is returned by every
// later Write and by Close.
type Trace struct {
	now       func() time.Time
	delivered atomic.Int64
	secrets   []string

	mu     sync.Mutex
	masker *Masker
	closed bool
	err    error
	// midLine is set when the last byte written was not a newline, so that
	// host lines and section markers can start on a line of their own.
	midLine bool
}

// New returns a Trace that writes to sink.
func New(sink io.Writer, opts Options) *Trace {
	t := &Trace{now: opts.Now, secrets: opts.Secrets}
	if t.now == nil {
		t.now = time.Now
	}
	var w io.Writer = &counter{w: sink, n: &t.delivered}
	switch {
	case opts.Limit == 0:
		w = NewLimit(w, DefaultLimit)
	case opts.Limit > 0:
		w = NewLimit(w, opts.Limit)
	}
	t.masker = NewMasker(w, opts.Secrets)
	return t
}

// Stream returns a writer for one output stream of a step (its stdout, or
// its stderr) that masks secrets within that stream before its bytes join
// the trace. Chunks of two streams interleave in the trace in whatever
// order they arrive, so a secret split across chunks of one stream is only
// sure to be masked by a masker that sees that stream alone. Close the
// stream when the step ended: it flushes what it held back.
func (t *Trace) Stream() io.WriteCloser { return NewMasker(t, t.secrets) }

// Write adds p to the trace. It reports len(p) unless the sink failed or
// the trace is closed; output over the limit is dropped silently.
func (t *Trace) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.write(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// write sends p down the pipeline; t.mu must be held.
func (t *Trace) write(p []byte) error {
	if t.closed {
		return ErrClosed
	}
	if t.err != nil {
		return t.err
	}
	if len(p) == 0 {
		return nil
	}
	if _, err := t.masker.Write(p); err != nil {
		t.err = fmt.Errorf("writing the job trace: %w", err)
		return t.err
	}
	t.midLine = p[len(p)-1] != '\n'
	return nil
}

// lineStart returns "\n" when the trace is in the middle of a line.
func (t *Trace) lineStart() string {
	if t.midLine {
		return "\n"
	}
	return ""
}

// Section writes the start marker of a collapsible section now and
// returns a function that writes its end marker when called; calling it
// again does nothing. Errors show in the next Write or in Close.
func (t *Trace) Section(name, header string) (end func()) {
	t.mu.Lock()
	_ = t.write([]byte(t.lineStart() + startMarker(t.now(), name, header)))
	t.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			t.mu.Lock()
			defer t.mu.Unlock()
			_ = t.write([]byte(t.lineStart() + endMarker(t.now(), name)))
			// What follows the end marker is rendered on its line.
			t.midLine = false
		})
	}
}

// Notice adds a line from the host itself (not from the job), in yellow,
// on a line of its own; each line of a multi-line message is colored on its
// own. A trailing newline in format is not needed.
// Errors show in the next Write or in Close.
func (t *Trace) Notice(format string, args ...any) { t.Colored("0;33", format, args...) }

// Colored is Notice in another ANSI color ("32;1" bold green for success,
// "31;1" bold red for errors).
func (t *Trace) Colored(color, format string, args ...any) {
	on := "\x1b[" + color + "m"
	msg := strings.TrimSuffix(fmt.Sprintf(format, args...), "\n")
	msg = strings.ReplaceAll(msg, "\n", "\x1b[0;m\n"+on)
	t.mu.Lock()
	defer t.mu.Unlock()
	_ = t.write([]byte(t.lineStart() + on + msg + "\x1b[0;m\n"))
}

// Close writes out what the masker still holds back; later writes fail with
// ErrClosed. It does not close the sink. Closing twice returns nil.
func (t *Trace) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	if t.err != nil {
		return t.err
	}
	if err := t.masker.Close(); err != nil {
		t.err = fmt.Errorf("flushing the job trace: %w", err)
		return t.err
	}
	return nil
}

// Bytes reports how many bytes the sink has received so far.
func (t *Trace) Bytes() int64 { return t.delivered.Load() }

// counter counts the bytes its writer accepted.
type counter struct {
	w io.Writer
	n *atomic.Int64
}

func (c *counter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}
