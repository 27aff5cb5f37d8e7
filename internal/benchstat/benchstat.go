// Package benchstat is what berth's benchmark harnesses (bench/ and the
// executors' TestBenchmark) share: the A B B A and concurrent loops, a
// trivial job through an executor, and
// to report their figures, quantiles by the nearest-rank method,
// milliseconds, and the machine's load.
package benchstat

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/berthci/berth/sdk"
)

// Quantile returns the q-quantile (0 ≤ q ≤ 1) of d by the nearest-rank
// method; 0 for no samples. d is not changed.
func Quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// Median is Quantile(d, 0.5).
func Median(d []time.Duration) time.Duration { return Quantile(d, 0.5) }

// Ms formats d in whole milliseconds ("12 ms").
func Ms(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond)) }

// LoadAverage is the 1, 5 and 15 minute load averages ("0.52 0.61 0.70"),
// or "unknown".
func LoadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// Alternate measures a and b n times each, alternating which goes first
// (A B B A …) so that the noise and drift of a shared machine hit both.
func Alternate(n int, a, b func() time.Duration) (sa, sb []time.Duration) {
	for i := range n {
		if i%2 == 0 {
			sa = append(sa, a())
			sb = append(sb, b())
		} else {
			sb = append(sb, b())
			sa = append(sa, a())
		}
	}
	return sa, sb
}

// Concurrently runs f n times, workers at a time, and returns the wall
// time of all of them and their errors joined.
func Concurrently(n, workers int, f func() error) (time.Duration, error) {
	jobs := make(chan struct{}, n)
	for range n {
		jobs <- struct{}{}
	}
	close(jobs)
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	start := time.Now()
	for range workers {
		wg.Go(func() {
			for range jobs {
				if err := f(); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	return time.Since(start), errors.Join(errs...)
}

// TrivialJob runs job through e as the host would, with one step `true`:
// Prepare, Run, Cleanup (also after a failed Prepare). It returns when
// each began and when Cleanup ended, and an error for any failure or a
// non-zero exit code.
func TrivialJob(ctx context.Context, e sdk.Executor, job sdk.Job) ([4]time.Time, error) {
	var marks [4]time.Time
	marks[0] = time.Now()
	h, err := e.Prepare(ctx, job)
	if err != nil {
		_ = e.Cleanup(ctx, sdk.Handle{JobID: job.ID})
		return marks, err
	}
	marks[1] = time.Now()
	code, err := e.Run(ctx, h, sdk.Step{Name: "script", Script: "true\n", Shell: "sh"}, sdk.Output{Stdout: io.Discard, Stderr: io.Discard})
	marks[2] = time.Now()
	if cerr := e.Cleanup(ctx, h); err == nil {
		err = cerr
	}
	marks[3] = time.Now()
	if err == nil && code != 0 {
		err = fmt.Errorf("job %s: exit code %d", job.ID, code)
	}
	return marks, err
}
