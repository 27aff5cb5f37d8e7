package main

import (
	"fmt"
	"time"

	"github.com/berthci/berth/internal/benchstat"
)

// samples are the durations of one measured thing.
type samples []time.Duration

// quantile returns the q-quantile (0 ≤ q ≤ 1) by the nearest-rank method.
func (s samples) quantile(q float64) time.Duration { return benchstat.Quantile(s, q) }

func (s samples) median() time.Duration { return s.quantile(0.5) }
func (s samples) p95() time.Duration    { return s.quantile(0.95) }

// interleave runs a and b n times each, alternating which goes first
// (ABBAABBA…), so that noise and drift hit both alike. warm runs of each
// come first and are not kept. A failure of either stops the loop.
func interleave(n, warm int, a, b func() (time.Duration, error)) (samples, samples, error) {
	var sa, sb samples
	for i := range warm + n {
		first, second := a, b
		if i%2 == 1 {
			first, second = b, a
		}
		d1, err := first()
		if err != nil {
			return nil, nil, err
		}
		d2, err := second()
		if err != nil {
			return nil, nil, err
		}
		if i < warm {
			continue
		}
		if i%2 == 1 {
			d1, d2 = d2, d1
		}
		sa, sb = append(sa, d1), append(sb, d2)
	}
	return sa, sb, nil
}

// interleave3 is interleave for three things, rotating the order.
func interleave3(n, warm int, fs [3]func() (time.Duration, error)) ([3]samples, error) {
	var out [3]samples
	for i := range warm + n {
		for j := range 3 {
			k := (i + j) % 3
			d, err := fs[k]()
			if err != nil {
				return out, err
			}
			if i >= warm {
				out[k] = append(out[k], d)
			}
		}
	}
	return out, nil
}

// fmtDur prints a duration in the unit that suits it.
func fmtDur(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.1f µs", float64(d)/float64(time.Microsecond))
	case d < time.Second:
		return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
}

// mibps is the throughput of moving n bytes in d, in MiB/s.
func mibps(n int64, d time.Duration) float64 {
	return float64(n) / (1 << 20) / d.Seconds()
}
