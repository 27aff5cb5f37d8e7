package benchstat

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestQuantile(t *testing.T) {
	d := []time.Duration{5, 1, 4, 2, 3, 10, 9, 8, 7, 6}
	for _, tt := range []struct {
		q    float64
		want time.Duration
	}{{0, 1}, {0.1, 1}, {0.5, 5}, {0.9, 9}, {0.95, 10}, {1, 10}} {
		if got := Quantile(d, tt.q); got != tt.want {
			t.Errorf("Quantile(%v) = %v; want %v", tt.q, got, tt.want)
		}
	}
	if d[0] != 5 {
		t.Error("Quantile sorted its argument")
	}
	if Quantile(nil, 0.5) != 0 || Median([]time.Duration{7}) != 7 {
		t.Error("empty or single samples")
	}
	if got := Ms(1500 * time.Microsecond); got != "2 ms" {
		t.Errorf("Ms = %q", got)
	}
}

func TestAlternate(t *testing.T) {
	var order string
	sa, sb := Alternate(4, func() time.Duration { order += "a"; return 1 }, func() time.Duration { order += "b"; return 2 })
	if order != "abbaabba" || len(sa) != 4 || len(sb) != 4 || sa[3] != 1 || sb[3] != 2 {
		t.Errorf("order %s, samples %v %v", order, sa, sb)
	}
}

// TestConcurrently: 20 calls, 4 at a time — the first four meet before
// any goes on (so four do run at once), never more than four run, and the
// calls' errors come back.
func TestConcurrently(t *testing.T) {
	var mu sync.Mutex
	running, most, calls := 0, 0, 0
	allIn := make(chan struct{})
	boom := errors.New("boom")
	_, err := Concurrently(20, 4, func() error {
		mu.Lock()
		running++
		calls++
		most = max(most, running)
		n := calls
		if n == 4 {
			close(allIn)
		}
		mu.Unlock()
		select {
		case <-allIn:
		case <-time.After(time.Minute):
			t.Error("four calls never ran at once")
		}
		mu.Lock()
		running--
		mu.Unlock()
		if n%10 == 0 {
			return boom
		}
		return nil
	})
	if calls != 20 || most != 4 {
		t.Errorf("%d calls, at most %d at once; want 20 calls, 4 at once", calls, most)
	}
	if !errors.Is(err, boom) || strings.Count(err.Error(), "boom") != 2 {
		t.Errorf("errors %v; want the two calls' errors", err)
	}
}
