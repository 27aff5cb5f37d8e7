package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/berthci/berth/lambda/protocol"
)

func TestLower(t *testing.T) {
	tests := []struct {
		keep []int
		cut  int
		want []int
	}{
		{[]int{10, 10}, 0, []int{10, 10}},
		{[]int{100, 10}, 50, []int{50, 10}},
		{[]int{100, 60}, 60, []int{50, 50}},
		{[]int{100, 5, 0}, 200, []int{0, 0, 0}},
		{[]int{7}, 7, []int{0}},
		{[]int{30, 30, 30}, 1, []int{29, 29, 29}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.keep, tt.cut), func(t *testing.T) {
			got := lower(tt.keep, tt.cut)
			if !slices.Equal(got, tt.want) {
				t.Errorf("lower(%v, %d) = %v, want %v", tt.keep, tt.cut, got, tt.want)
			}
			removed, total := 0, 0
			for i := range got {
				removed += tt.keep[i] - got[i]
				total += tt.keep[i]
			}
			if removed < min(tt.cut, total) {
				t.Errorf("lower removed %d bytes, want at least %d", removed, tt.cut)
			}
		})
	}
}

// filled is a capture that was written n bytes of c.
func filled(limit, n int, c byte) *capture {
	w := newCapture(limit)
	chunk := bytes.Repeat([]byte{c}, 64<<10)
	for n > 0 {
		k := min(n, len(chunk))
		w.Write(chunk[:k])
		n -= k
	}
	return w
}

func TestEncode(t *testing.T) {
	const limit = 1 << 20
	tests := []struct {
		name     string
		sizes    [][2]int // stdout, stderr per step
		files    int
		wantCut  []bool // per stream
		filesErr bool
	}{
		{name: "fits", sizes: [][2]int{{1000, 10}, {5, 0}}, wantCut: []bool{false, false, false, false}},
		{name: "one big stream", sizes: [][2]int{{5 << 20, 10}, {100, 3}}, wantCut: []bool{true, false, false, false}},
		{name: "two big streams", sizes: [][2]int{{3 << 20, 2 << 20}, {6, 0}}, wantCut: []bool{true, true, false, false}},
		{name: "just over", sizes: [][2]int{{limit * 3 / 4, 0}}, wantCut: []bool{true, false}},
		{name: "files and output", sizes: [][2]int{{2 << 20, 0}}, files: 100 << 10, wantCut: []bool{true, false}},
		{name: "files too big", sizes: [][2]int{{100, 0}}, files: limit, wantCut: []bool{false, false}, filesErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := &protocol.Response{Version: protocol.Version, Steps: make([]protocol.StepResult, len(tt.sizes))}
			if tt.files > 0 {
				resp.FilesTarGz = bytes.Repeat([]byte{'f'}, tt.files)
			}
			var streams []stream
			for i, sz := range tt.sizes {
				out, errs := filled(limit, sz[0], 'o'), filled(limit, sz[1], 'e')
				if i == 0 {
					errs.note("[berth] a note\n")
				}
				streams = append(streams,
					out.stream(fmt.Sprintf("stdout of step %d", i), &resp.Steps[i].Stdout),
					errs.stream(fmt.Sprintf("stderr of step %d", i), &resp.Steps[i].Stderr))
			}
			body, err := encode(resp, streams, limit)
			if err != nil {
				t.Fatal(err)
			}
			if len(body) > limit {
				t.Errorf("the response has %d bytes, more than the limit %d", len(body), limit)
			}
			var got protocol.Response
			if err := json.Unmarshal(body, &got); err != nil {
				t.Fatal(err)
			}
			if (got.FilesError != "") != tt.filesErr || (got.FilesError == "") != (len(got.FilesTarGz) == tt.files) {
				t.Errorf("files: %d bytes back, error %q; want error: %v", len(got.FilesTarGz), got.FilesError, tt.filesErr)
			}
			var dropped int64
			for i, sz := range tt.sizes {
				for k, data := range [][]byte{got.Steps[i].Stdout, got.Steps[i].Stderr} {
					idx := 2*i + k
					text := string(data)
					if i == 0 && k == 1 {
						var ok bool
						if text, ok = strings.CutSuffix(text, "[berth] a note\n"); !ok {
							t.Errorf("stderr of step 0 does not end with the note: %.100q", data[max(0, len(data)-100):])
						}
						if !strings.Contains(text, "cut:") {
							text = strings.TrimSuffix(text, "\n") // put before the note: the output has none
						}
					}
					cut := strings.Contains(text, "cut:")
					if cut != tt.wantCut[idx] {
						t.Errorf("stream %d: cut %v, want %v (%d bytes written)", idx, cut, tt.wantCut[idx], sz[k])
					}
					if !cut {
						if len(text) != sz[k] {
							t.Errorf("stream %d: %d bytes, want all %d", idx, len(text), sz[k])
						}
						continue
					}
					kept, line, _ := strings.Cut(text, "[berth]")
					kept = strings.TrimSuffix(kept, "\n")
					lost := int64(sz[k] - len(kept))
					dropped += lost
					if strings.Trim(kept, "oe") != "" {
						t.Errorf("stream %d: the kept part is not a prefix of what was written", idx)
					}
					if !strings.Contains(line, fmt.Sprintf("(%d bytes) dropped", lost)) || strings.Count(line, "\n") != 1 {
						t.Errorf("stream %d: the cut line %q does not say that %d bytes were dropped", idx, line, lost)
					}
					if len(kept) < limit/8 {
						t.Errorf("stream %d: only %d bytes kept of a %d byte response", idx, len(kept), limit)
					}
				}
			}
			if got.DroppedBytes != dropped {
				t.Errorf("DroppedBytes is %d, the cut lines say %d", got.DroppedBytes, dropped)
			}
		})
	}
}
