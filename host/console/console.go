// Package console shows job traces on a terminal or in a log: whole lines
// only, one job's lines prefixed with its name when several jobs share the
// screen, GitLab's section markers turned into plain headers.
package console

import (
	"bytes"
	"fmt"
	"io"
	"sync"

	"github.com/berthci/berth/host/trace"
)

// Screen is the shared output: it writes whole lines from many jobs
// without mixing them.
type Screen struct {
	mu    sync.Mutex
	w     io.Writer
	color bool
}

// NewScreen returns a Screen writing to w; color says whether ANSI colors
// may be used (the jobs' own colors are passed through either way).
func NewScreen(w io.Writer, color bool) *Screen { return &Screen{w: w, color: color} }

// Printf writes a whole line (or lines) of the host's own.
func (s *Screen) Printf(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintf(s.w, format, args...)
}

// Color wraps text in an ANSI color when the screen has colors.
func (s *Screen) Color(code int, text string) string {
	if !s.color {
		return text
	}
	return fmt.Sprintf("\x1b[%dm%s\x1b[0m", code, text)
}

// jobColors are the prefixes' colors, picked by job index.
func jobColor(i int) int {
	colors := [...]int{36, 35, 34, 33, 32, 96, 95, 94, 93, 92}
	return colors[i%len(colors)]
}

// Job returns a writer for one job's trace. With prefix set, every line
// starts with the job's name in its color (index picks the color).
// Close writes a last unterminated line.
func (s *Screen) Job(name string, index int, prefix bool) io.WriteCloser {
	j := &jobWriter{s: s}
	if prefix {
		j.prefix = []byte(s.Color(jobColor(index), name) + " | ")
	}
	return j
}

type jobWriter struct {
	s       *Screen
	prefix  []byte
	partial []byte
}

func (j *jobWriter) Write(p []byte) (int, error) {
	j.partial = append(j.partial, p...)
	last := bytes.LastIndexByte(j.partial, '\n')
	if last < 0 {
		return len(p), nil
	}
	j.emit(j.partial[:last+1])
	j.partial = append(j.partial[:0], j.partial[last+1:]...)
	return len(p), nil
}

func (j *jobWriter) emit(lines []byte) {
	var out bytes.Buffer
	for len(lines) > 0 {
		i := bytes.IndexByte(lines, '\n')
		line := lines
		if i >= 0 {
			line, lines = lines[:i+1], lines[i+1:]
		} else {
			lines = nil
		}
		clean := trace.MarkerPattern().ReplaceAll(line, nil)
		if len(bytes.TrimSpace(clean)) == 0 && len(clean) != len(line) {
			continue // a line that held only a section end
		}
		out.Write(j.prefix)
		out.Write(clean)
		if clean[len(clean)-1] != '\n' {
			out.WriteByte('\n')
		}
	}
	j.s.mu.Lock()
	defer j.s.mu.Unlock()
	j.s.w.Write(out.Bytes())
}

func (j *jobWriter) Close() error {
	if len(j.partial) > 0 {
		j.emit(j.partial)
		j.partial = nil
	}
	return nil
}
