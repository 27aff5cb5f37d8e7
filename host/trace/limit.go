package trace

import (
	"fmt"
	"io"
)

// Limit passes the first limit bytes written to it through, then writes one
// line saying that the log exceeded the limit and that later output is
// dropped, and swallows everything after. Write still reports len(p) for
// swallowed bytes, so whoever produces the output is not disturbed. The
// underlying writer receives at most limit bytes plus that one line.
// A Limit is safe for one writer.
type Limit struct {
	w        io.Writer
	limit    int64
	passed   int64
	dropped  int64
	exceeded bool
	// midLine is set when the last byte passed through was not a newline.
	midLine bool
}

// NewLimit returns a Limit that passes at most limit bytes to w. A limit
// below zero is taken as zero.
func NewLimit(w io.Writer, limit int64) *Limit {
	return &Limit{w: w, limit: max(limit, 0)}
}

// Write passes on what still fits under the limit and drops the rest.
func (l *Limit) Write(p []byte) (int, error) {
	room := l.limit - l.passed
	if int64(len(p)) <= room {
		n, err := l.pass(p)
		if err != nil {
			return n, err
		}
		return len(p), nil
	}
	if room > 0 {
		if n, err := l.pass(p[:room]); err != nil {
			return n, err
		}
	}
	l.dropped += int64(len(p)) - max(room, 0)
	if !l.exceeded {
		l.exceeded = true
		line := fmt.Sprintf("\x1b[31;1mThe job log exceeded its limit of %d bytes; "+
			"the job goes on, but its further output is dropped.\x1b[0;m\n", l.limit)
		if l.midLine {
			line = "\n" + line
		}
		if _, err := io.WriteString(l.w, line); err != nil {
			return int(max(room, 0)), fmt.Errorf("writing the log limit notice: %w", err)
		}
	}
	return len(p), nil
}

func (l *Limit) pass(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, err := l.w.Write(p)
	l.passed += int64(n)
	if n > 0 {
		l.midLine = p[n-1] != '\n'
	}
	return n, err
}

// Dropped reports how many bytes were swallowed because of the limit.
func (l *Limit) Dropped() int64 { return l.dropped }
