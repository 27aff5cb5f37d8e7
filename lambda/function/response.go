package main

import (
	"encoding/json"
	"fmt"
	"slices"
	"sync"

	"github.com/berthci/berth/lambda/protocol"
)

// capture keeps the first limit bytes written to one output stream and
// counts the rest.
type capture struct {
	mu    sync.Mutex
	limit int
	head  []byte
	total int64
	notes []string
}

func newCapture(limit int) *capture { return &capture{limit: limit} }

func (c *capture) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.total += int64(len(p))
	if room := c.limit - len(c.head); room > 0 {
		c.head = append(c.head, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

// note adds a line of the function's own (why a step was stopped). Notes
// come after the output and are never cut.
func (c *capture) note(line string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.notes = append(c.notes, line)
}

// stream returns what the capture holds as a stream for encode.
func (c *capture) stream(name string, dst *[]byte) stream {
	c.mu.Lock()
	defer c.mu.Unlock()
	return stream{name: name, head: slices.Clone(c.head), total: c.total, notes: slices.Clone(c.notes), dst: dst}
}

// stream is one output stream of one step, as the response will carry it.
type stream struct {
	name  string // "stdout of step \"script\""
	head  []byte
	total int64
	notes []string
	dst   *[]byte
}

// minOutputRoom is what the files may not take from the response: output
// is worth more than artifacts that do not fit anyway.
const minOutputRoom = 64 << 10

// encode marshals resp with the streams' output, cutting output so that
// the result has at most limit bytes. A cut stream ends with one line
// saying how much of it was dropped. Files that leave less than
// minOutputRoom for output are dropped, and FilesError says so.
func encode(resp *protocol.Response, streams []stream, limit int) ([]byte, error) {
	for _, s := range streams {
		*s.dst = nil
	}
	bare, err := json.Marshal(resp)
	if err != nil {
		return nil, fmt.Errorf("encoding the response: %w", err)
	}
	if len(bare)+minOutputRoom > limit && len(resp.FilesTarGz) > 0 {
		resp.FilesError = fmt.Sprintf("the files to send back are %d bytes compressed; with the output they do not fit in a Lambda response (at most %d bytes): download fewer paths", len(resp.FilesTarGz), limit)
		resp.FilesTarGz = nil
	}
	keep := make([]int, len(streams))
	for i, s := range streams {
		keep[i] = len(s.head)
	}
	for range 10 {
		var dropped int64
		for i, s := range streams {
			out := s.head[:keep[i]]
			if lost := s.total - int64(keep[i]); lost > 0 {
				out = append(slices.Clip(out), cutLine(out, s.name, lost, limit)...)
				dropped += lost
			}
			for _, n := range s.notes {
				if len(out) > 0 && out[len(out)-1] != '\n' {
					out = append(slices.Clip(out), '\n')
				}
				out = append(slices.Clip(out), n...)
			}
			*s.dst = out
		}
		resp.DroppedBytes = dropped
		b, err := json.Marshal(resp)
		if err != nil {
			return nil, fmt.Errorf("encoding the response: %w", err)
		}
		if len(b) <= limit {
			return b, nil
		}
		// Base64 takes 4 bytes for 3; each stream may gain a cut line and
		// padding.
		excess := (len(b)-limit)*3/4 + 1
		keep = lower(keep, excess+len(streams)*200)
	}
	for _, s := range streams {
		*s.dst = nil
	}
	return nil, fmt.Errorf("the response does not fit in %d bytes even without output", limit)
}

// lower takes cut bytes away from keep, from the largest values first:
// every value above some level is brought down to it.
func lower(keep []int, cut int) []int {
	total := 0
	for _, k := range keep {
		total += k
	}
	out := make([]int, len(keep))
	if cut >= total {
		return out
	}
	removed := func(level int) int {
		n := 0
		for _, k := range keep {
			n += max(0, k-level)
		}
		return n
	}
	// The highest level that removes at least cut bytes.
	lo, hi := 0, slices.Max(keep)
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if removed(mid) >= cut {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	for i, k := range keep {
		out[i] = min(k, lo)
	}
	return out
}

// cutLine is the line that ends a cut stream.
func cutLine(kept []byte, name string, lost int64, limit int) string {
	line := fmt.Sprintf("[berth] %s cut: %s (%d bytes) dropped, as a Lambda response holds at most %s\n",
		name, human(lost), lost, human(int64(limit)))
	if len(kept) > 0 && kept[len(kept)-1] != '\n' {
		line = "\n" + line
	}
	return line
}

// human prints a byte count with a binary unit.
func human(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}
