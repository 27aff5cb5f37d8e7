package main

import (
	"errors"
	"testing"
	"time"
)

func TestQuantile(t *testing.T) {
	s := samples{5, 1, 4, 2, 3, 6, 8, 7, 10, 9}
	if got := s.median(); got != 5 {
		t.Errorf("median = %d, want 5", got)
	}
	if got := s.p95(); got != 10 {
		t.Errorf("p95 = %d, want 10", got)
	}
	if got := (samples{}).median(); got != 0 {
		t.Errorf("median of nothing = %d, want 0", got)
	}
	if s[0] != 5 {
		t.Error("quantile sorted the samples in place")
	}
}

func TestInterleaveKeepsSamplesApart(t *testing.T) {
	var order []string
	a := func() (time.Duration, error) { order = append(order, "a"); return 1, nil }
	b := func() (time.Duration, error) { order = append(order, "b"); return 2, nil }
	sa, sb, err := interleave(3, 1, a, b)
	if err != nil {
		t.Fatal(err)
	}
	if want := "abbaabba"; joined(order) != want {
		t.Errorf("order %s, want %s", joined(order), want)
	}
	if len(sa) != 3 || len(sb) != 3 {
		t.Fatalf("got %d and %d samples, want 3 each (the warm-up is dropped)", len(sa), len(sb))
	}
	for i := range sa {
		if sa[i] != 1 || sb[i] != 2 {
			t.Errorf("sample %d: a %d, b %d; want 1 and 2", i, sa[i], sb[i])
		}
	}
}

func TestInterleave3Rotates(t *testing.T) {
	var order []string
	f := func(name string, d time.Duration) func() (time.Duration, error) {
		return func() (time.Duration, error) { order = append(order, name); return d, nil }
	}
	s, err := interleave3(2, 1, [3]func() (time.Duration, error){f("x", 1), f("y", 2), f("z", 3)})
	if err != nil {
		t.Fatal(err)
	}
	if want := "xyzyzxzxy"; joined(order) != want {
		t.Errorf("order %s, want %s", joined(order), want)
	}
	for k, want := range []time.Duration{1, 2, 3} {
		if len(s[k]) != 2 || s[k][0] != want || s[k][1] != want {
			t.Errorf("samples %d = %v, want two of %d", k, s[k], want)
		}
	}
}

func TestInterleaveStopsOnError(t *testing.T) {
	boom := errors.New("boom")
	ok := func() (time.Duration, error) { return 1, nil }
	bad := func() (time.Duration, error) { return 0, boom }
	if _, _, err := interleave(5, 0, ok, bad); !errors.Is(err, boom) {
		t.Errorf("err = %v, want boom", err)
	}
}

func joined(s []string) string {
	out := ""
	for _, x := range s {
		out += x
	}
	return out
}
