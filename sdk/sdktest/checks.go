package sdktest

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"strconv"
	"strings"
	"sync"

	"github.com/berthci/berth/sdk"
)

// capture keeps what a step writes to one stream and tells when a marker
// has appeared in it.
type capture struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	marker []byte
	seen   chan struct{}
}

func newCapture(marker string) *capture {
	return &capture{marker: []byte(marker), seen: make(chan struct{})}
}

func (c *capture) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf.Write(p)
	if len(c.marker) > 0 && bytes.Contains(c.buf.Bytes(), c.marker) {
		c.marker = nil
		close(c.seen)
	}
	return len(p), nil
}

func (c *capture) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

// outputs returns n Outputs with fresh captures.
func outputs(n int) ([]sdk.Output, []*capture, []*capture) {
	outs := make([]sdk.Output, n)
	stdout := make([]*capture, n)
	stderr := make([]*capture, n)
	for i := range outs {
		stdout[i], stderr[i] = newCapture(""), newCapture("")
		outs[i] = sdk.Output{Stdout: stdout[i], Stderr: stderr[i]}
	}
	return outs, stdout, stderr
}

// seqReader produces what `seq 1 N` prints: "1\n2\n3\n…", endlessly.
type seqReader struct {
	next    int64
	pending []byte
}

func (s *seqReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if len(s.pending) == 0 {
			s.next++
			s.pending = strconv.AppendInt(s.pending[:0], s.next, 10)
			s.pending = append(s.pending, '\n')
		}
		k := copy(p[n:], s.pending)
		s.pending = s.pending[k:]
		n += k
	}
	return n, nil
}

// streamCheck compares a stream, as it arrives, with the bytes expected,
// without keeping it: it remembers the first difference, the length and
// a hash of what arrived.
type streamCheck struct {
	mu       sync.Mutex
	want     io.Reader
	scratch  []byte
	n        int64
	mismatch int64 // offset of the first difference, -1 if none
	got      hash.Hash
	// rest holds the first bytes from the first difference on.
	rest []byte
}

func newStreamCheck(want io.Reader) *streamCheck {
	return &streamCheck{want: want, mismatch: -1, got: sha256.New()}
}

func (s *streamCheck) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got.Write(p)
	from := len(p) // where p starts to differ, if it does
	if s.mismatch < 0 {
		if cap(s.scratch) < len(p) {
			s.scratch = make([]byte, len(p))
		}
		w := s.scratch[:len(p)]
		k, _ := io.ReadFull(s.want, w)
		for i := range p {
			if i >= k || p[i] != w[i] {
				s.mismatch = s.n + int64(i)
				from = i
				break
			}
		}
	} else {
		from = 0
	}
	if room := maxRest - len(s.rest); from < len(p) && room > 0 {
		s.rest = append(s.rest, p[from:from+min(len(p)-from, room)]...)
	}
	s.n += int64(len(p))
	return len(p), nil
}

// maxRest is how much streamCheck keeps from the first difference on.
const maxRest = 4 << 10

// afterMismatch returns what arrived from the first difference on (its
// first maxRest bytes).
func (s *streamCheck) afterMismatch() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.rest)
}

// result describes what arrived.
func (s *streamCheck) result() (n, mismatch int64, sum string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n, s.mismatch, fmt.Sprintf("%x", s.got.Sum(nil))
}

// quote writes value as the host does in a generated script: in single
// quotes, with each ' written as '\”.
func quote(value string) string {
	return "'" + strings.ReplaceAll(value, "'", `'\''`) + "'"
}

// firstDiff describes where got first differs from want, line by line.
func firstDiff(got, want string) string {
	g, w := strings.SplitAfter(got, "\n"), strings.SplitAfter(want, "\n")
	for i := range max(len(g), len(w)) {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			return fmt.Sprintf("line %d is %q, want %q", i+1, gl, wl)
		}
	}
	return "no difference"
}

// pidsIn finds the numbers after "pids " on a line of out.
func pidsIn(out string) []int {
	var pids []int
	for _, line := range strings.Split(out, "\n") {
		rest, ok := strings.CutPrefix(line, "pids ")
		if !ok {
			continue
		}
		for _, f := range strings.Fields(rest) {
			if n, err := strconv.Atoi(f); err == nil && n > 0 {
				pids = append(pids, n)
			}
		}
	}
	return pids
}
