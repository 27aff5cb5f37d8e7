package trace

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthci/berth/internal/syncbuf"
)

func TestTraceConcurrentWriters(t *testing.T) {
	const writers, lines = 8, 200
	secret := "pa55-w0rd"
	var sink syncbuf.Buffer
	tr := New(&sink, Options{Secrets: []string{secret}, Limit: -1})
	var wg sync.WaitGroup
	for g := range writers {
		wg.Go(func() {
			for i := range lines {
				line := fmt.Sprintf("writer %d line %d secret=%s end\n", g, i, secret)
				if _, err := tr.Write([]byte(line)); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Go(func() {
		for i := range lines {
			tr.Notice("host message %d", i)
		}
	})
	wg.Wait()
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	out := sink.String()
	if strings.Contains(out, secret) {
		t.Errorf("the secret reached the sink")
	}
	for g := range writers {
		for i := range lines {
			want := fmt.Sprintf("writer %d line %d secret=[MASKED] end\n", g, i)
			if !strings.Contains(out, want) {
				t.Fatalf("line %q is missing or torn", want)
			}
		}
	}
	for i := range lines {
		want := fmt.Sprintf("\x1b[0;33mhost message %d\x1b[0;m\n", i)
		if !strings.Contains(out, want) {
			t.Fatalf("notice %q is missing or torn", want)
		}
	}
	if got := tr.Bytes(); got != int64(len(out)) {
		t.Errorf("Bytes() = %d, sink holds %d", got, len(out))
	}
}

func TestTraceMasksBeforeLimiting(t *testing.T) {
	secret := strings.Repeat("S", 100)
	var sink bytes.Buffer
	tr := New(&sink, Options{Secrets: []string{secret}, Limit: 20})
	// 100 secret bytes become 8; with 12 more bytes that is exactly 20.
	if _, err := tr.Write([]byte(secret + "01234567890\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Write([]byte("dropped\n")); err != nil {
		t.Fatal(err)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	want := "[MASKED]01234567890\n" + "\x1b[31;1mThe job log exceeded its limit of 20 bytes; " +
		"the job goes on, but its further output is dropped.\x1b[0;m\n"
	if sink.String() != want {
		t.Errorf("sink = %q, want %q", sink.String(), want)
	}
	if tr.Bytes() != int64(len(want)) {
		t.Errorf("Bytes() = %d, want %d", tr.Bytes(), len(want))
	}
}

func TestTraceLimitOptions(t *testing.T) {
	tests := []struct {
		name     string
		limit    int64
		write    int
		wantSink int // bytes of job output in the sink
	}{
		{"default limit", 0, DefaultLimit + 10, DefaultLimit},
		{"no limit", -1, DefaultLimit + 10, DefaultLimit + 10},
		{"own limit", 1000, 5000, 1000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var sink bytes.Buffer
			tr := New(&sink, Options{Limit: tt.limit})
			n, err := tr.Write(bytes.Repeat([]byte("Q"), tt.write))
			if err != nil || n != tt.write {
				t.Fatalf("Write = %d, %v; want %d, nil", n, err, tt.write)
			}
			if err := tr.Close(); err != nil {
				t.Fatal(err)
			}
			if got := bytes.Count(sink.Bytes(), []byte("Q")); got != tt.wantSink {
				t.Errorf("sink holds %d bytes of output, want %d", got, tt.wantSink)
			}
		})
	}
}

func TestTraceSectionsAndNotices(t *testing.T) {
	clock := time.Unix(1000, 0)
	now := func() time.Time {
		clock = clock.Add(time.Second)
		return clock
	}
	var sink bytes.Buffer
	tr := New(&sink, Options{Now: now, Secrets: []string{"hidden"}})
	end := tr.Section("Step Script", "Running the script")
	_, _ = tr.Write([]byte("no newline at the end, hidden"))
	tr.Notice("something %s\n", "happened")
	_, _ = tr.Write([]byte("partial"))
	end()
	end() // a second call writes nothing
	tr.Notice("two\nlines")
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	want := "section_start:1001:step_script\r\x1b[0KRunning the script\n" +
		"no newline at the end, [MASKED]\n" +
		"\x1b[0;33msomething happened\x1b[0;m\n" +
		"partial\n" +
		"section_end:1002:step_script\r\x1b[0K" +
		"\x1b[0;33mtwo\x1b[0;m\n\x1b[0;33mlines\x1b[0;m\n"
	if sink.String() != want {
		t.Errorf("sink =\n%q\nwant\n%q", sink.String(), want)
	}
}

func TestTraceClose(t *testing.T) {
	var sink bytes.Buffer
	tr := New(&sink, Options{Secrets: []string{"secret"}})
	if _, err := tr.Write([]byte("tail: secr")); err != nil {
		t.Fatal(err)
	}
	if got := sink.String(); got != "tail: " {
		t.Fatalf("before Close the sink has %q, want the possible secret held back", got)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if got := sink.String(); got != "tail: secr" {
		t.Errorf("after Close the sink has %q, want the held bytes flushed", got)
	}
	if _, err := tr.Write([]byte("late")); !errors.Is(err, ErrClosed) {
		t.Errorf("Write after Close: error %v, want ErrClosed", err)
	}
	tr.Notice("late notice")
	if err := tr.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if got := sink.String(); got != "tail: secr" {
		t.Errorf("after Close the sink changed to %q", got)
	}
}

func TestTraceSinkErrorIsSticky(t *testing.T) {
	boom := errors.New("no space left on device")
	tr := New(failingWriter{boom}, Options{})
	if _, err := tr.Write([]byte("a\n")); !errors.Is(err, boom) {
		t.Errorf("Write: error %v, want %v", err, boom)
	}
	if _, err := tr.Write([]byte("b\n")); !errors.Is(err, boom) {
		t.Errorf("second Write: error %v, want %v", err, boom)
	}
	if err := tr.Close(); !errors.Is(err, boom) {
		t.Errorf("Close: error %v, want %v", err, boom)
	}
}
