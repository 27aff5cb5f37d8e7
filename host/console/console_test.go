package console

import (
	"bytes"
	"io"
	"sync"
	"testing"
)

func TestJobWriter(t *testing.T) {
	tests := []struct {
		name   string
		prefix bool
		writes []string
		want   string
	}{
		{
			name:   "whole lines with prefix, partial line held until newline",
			prefix: true,
			writes: []string{"hel", "lo\nwor", "ld\n"},
			want:   "job | hello\njob | world\n",
		},
		{
			name:   "section markers become plain headers; a lone end marker vanishes",
			writes: []string{"section_start:1700000000:step_script\r\x1b[0KExecuting step\n", "out\n", "section_end:1700000000:step_script\r\x1b[0K", "section_start:1700000001:after\r\x1b[0KAfter\n"},
			want:   "Executing step\nout\nAfter\n",
		},
		{
			name:   "unterminated last line is written on Close",
			writes: []string{"no newline"},
			want:   "no newline\n",
		},
		{
			name:   "trailing end marker only",
			writes: []string{"x\n", "section_end:1700000000:s\r\x1b[0K"},
			want:   "x\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			s := NewScreen(&out, false)
			w := s.Job("job", 0, tt.prefix)
			for _, p := range tt.writes {
				if _, err := io.WriteString(w, p); err != nil {
					t.Fatal(err)
				}
			}
			w.Close()
			if out.String() != tt.want {
				t.Errorf("got %q, want %q", out.String(), tt.want)
			}
		})
	}
}

func TestJobsDoNotTearEachOthersLines(t *testing.T) {
	var out bytes.Buffer
	s := NewScreen(&out, false)
	var wg sync.WaitGroup
	for _, name := range []string{"a", "b", "c"} {
		w := s.Job(name, 0, true)
		wg.Go(func() {
			for range 200 {
				io.WriteString(w, "0123")
				io.WriteString(w, "456789\n")
			}
			w.Close()
		})
	}
	wg.Wait()
	for _, line := range bytes.Split(bytes.TrimSuffix(out.Bytes(), []byte("\n")), []byte("\n")) {
		if len(line) != len("a | 0123456789") {
			t.Fatalf("torn line %q", line)
		}
	}
}
