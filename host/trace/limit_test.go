package trace

import (
	"bytes"
	"errors"
	"testing"
)

func TestLimit(t *testing.T) {
	notice := func(limit string) string {
		return "\x1b[31;1mThe job log exceeded its limit of " + limit +
			" bytes; the job goes on, but its further output is dropped.\x1b[0;m\n"
	}
	tests := []struct {
		name        string
		limit       int64
		writes      []string
		want        string
		wantDropped int64
	}{
		{"under the limit", 10, []string{"abc", "def\n"}, "abcdef\n", 0},
		{"exactly the limit", 6, []string{"abc", "def"}, "abcdef", 0},
		{"one byte over", 6, []string{"abcdef", "g"}, "abcdef\n" + notice("6"), 1},
		{"write straddles the limit", 5, []string{"ab", "cdefgh"}, "abcde\n" + notice("5"), 3},
		{"limit ends on a newline", 4, []string{"abc\nd"}, "abc\n" + notice("4"), 1},
		{"notice written once", 3, []string{"abcd", "efg", "h"}, "abc\n" + notice("3"), 5},
		{"zero limit", 0, []string{"x", "yz"}, notice("0"), 3},
		{"negative limit is zero", -5, []string{"x"}, notice("0"), 1},
		{"empty writes", 2, []string{"", "ab", ""}, "ab", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var sink bytes.Buffer
			l := NewLimit(&sink, tt.limit)
			for _, w := range tt.writes {
				n, err := l.Write([]byte(w))
				if err != nil || n != len(w) {
					t.Fatalf("Write(%q) = %d, %v; want %d, nil", w, n, err, len(w))
				}
			}
			if sink.String() != tt.want {
				t.Errorf("sink = %q, want %q", sink.String(), tt.want)
			}
			if got := l.Dropped(); got != tt.wantDropped {
				t.Errorf("Dropped() = %d, want %d", got, tt.wantDropped)
			}
		})
	}
}

func TestLimitReportsWriterErrors(t *testing.T) {
	boom := errors.New("connection reset")
	l := NewLimit(failingWriter{boom}, 10)
	if _, err := l.Write([]byte("abc")); !errors.Is(err, boom) {
		t.Errorf("Write under the limit: error %v, want %v", err, boom)
	}
	l = NewLimit(failingWriter{boom}, 0)
	if _, err := l.Write([]byte("abc")); !errors.Is(err, boom) {
		t.Errorf("Write of the notice: error %v, want %v", err, boom)
	}
}
