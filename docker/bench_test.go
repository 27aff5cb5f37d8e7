package docker

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/berthci/berth/internal/benchstat"
	"github.com/berthci/berth/sdk"
)

// TestBenchmark measures a trivial job (Prepare, one step running true,
// Cleanup) through the executor against `docker run --rm IMAGE true` with
// the docker CLI, alternated in the same run (A B B A …), one at a time and
// 20 at concurrency 4. It runs only with BERTH_DOCKER_BENCH set (to the
// number of serial rounds, default 10) and prints a table for
// docs/BENCHMARKS.md.
func TestBenchmark(t *testing.T) {
	rounds, _ := strconv.Atoi(os.Getenv("BERTH_DOCKER_BENCH"))
	if os.Getenv("BERTH_DOCKER_BENCH") == "" {
		t.Skip("set BERTH_DOCKER_BENCH=N to run the benchmark (N serial rounds, default 10)")
	}
	if rounds <= 0 {
		rounds = 10
	}
	c := engineClient(t)
	docker, err := exec.LookPath("docker")
	if err != nil {
		t.Skipf("the baseline needs the docker CLI: %v", err)
	}
	image := testImage(t, c, "berth-test/busybox", imageOptions{})
	e := New()
	if err := e.Configure(t.Context(), map[string]any{"pull_policy": "if-not-present", "runner_name": "berth-bench"}); err != nil {
		t.Fatal(err)
	}
	var n int
	var mu sync.Mutex
	// The calls of each job, while one job runs at a time.
	var phases [3][]time.Duration
	serial := true
	job := func() error {
		mu.Lock()
		n++
		id := fmt.Sprintf("bench-%d-%d", os.Getpid(), n)
		mu.Unlock()
		m, err := benchstat.TrivialJob(context.Background(), e, sdk.Job{ID: id, Image: sdk.Image{Name: image}, Timeout: time.Minute})
		if serial && err == nil {
			for i := range phases {
				phases[i] = append(phases[i], m[i+1].Sub(m[i]))
			}
		}
		return err
	}
	plain := func() error {
		out, err := exec.Command(docker, "run", "--rm", image, "true").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}
	timed := func(f func() error) time.Duration {
		start := time.Now()
		if err := f(); err != nil {
			t.Fatal(err)
		}
		return time.Since(start)
	}
	// Warm up both paths once.
	timed(job)
	timed(plain)
	a, b := benchstat.Alternate(rounds, func() time.Duration { return timed(job) }, func() time.Duration { return timed(plain) })
	serial = false
	concurrent := func(f func() error) time.Duration {
		d, err := benchstat.Concurrently(20, 4, f)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	ca1 := concurrent(job)
	cb1 := concurrent(plain)
	cb2 := concurrent(plain)
	ca2 := concurrent(job)
	// Output throughput: 100 MiB through a step against the same through
	// `docker exec` of the CLI, in one job container.
	id := fmt.Sprintf("bench-%d-tput", os.Getpid())
	h, err := e.Prepare(context.Background(), sdk.Job{ID: id, Image: sdk.Image{Name: image}, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	st, _ := decodeState(h)
	const mib = 100
	produce := fmt.Sprintf("head -c %d /dev/zero", mib<<20)
	step := func() error {
		code, err := e.Run(context.Background(), h, sdk.Step{Name: "tput", Script: produce, Shell: "sh"}, sdk.Output{Stdout: io.Discard, Stderr: io.Discard})
		if err == nil && code != 0 {
			err = fmt.Errorf("exit code %d", code)
		}
		return err
	}
	cli := func() error {
		cmd := exec.Command(docker, "exec", st.Container, "sh", "-c", produce)
		cmd.Stdout = io.Discard
		return cmd.Run()
	}
	ta, tb := benchstat.Alternate(4, func() time.Duration { return timed(step) }, func() time.Duration { return timed(cli) })
	mibs := func(d time.Duration) float64 { return mib / d.Seconds() }
	if err := e.Cleanup(context.Background(), h); err != nil {
		t.Fatal(err)
	}

	ma, mb := benchstat.Median(a), benchstat.Median(b)
	fmt.Printf("| trivial job, one at a time (n=%d each), median (p90) | %s (%s) | %s (%s) | %.2f× |\n",
		rounds, benchstat.Ms(ma), benchstat.Ms(benchstat.Quantile(a, 0.90)), benchstat.Ms(mb), benchstat.Ms(benchstat.Quantile(b, 0.90)), float64(ma)/float64(mb))
	fmt.Printf("| — of which Prepare, Run (`true`), Cleanup, medians | %s, %s, %s | | |\n", benchstat.Ms(benchstat.Median(phases[0])), benchstat.Ms(benchstat.Median(phases[1])), benchstat.Ms(benchstat.Median(phases[2])))
	fmt.Printf("| 20 jobs at concurrency 4, wall time (two runs) | %s, %s | %s, %s | %.2f× |\n",
		benchstat.Ms(ca1), benchstat.Ms(ca2), benchstat.Ms(cb1), benchstat.Ms(cb2), float64(ca1+ca2)/float64(cb1+cb2))
	fmt.Printf("| output throughput, 100 MiB from `head -c` (n=4 each), median | %.0f MiB/s | %.0f MiB/s (`docker exec`) | %.0f %% |\n",
		mibs(benchstat.Median(ta)), mibs(benchstat.Median(tb)), 100*mibs(benchstat.Median(ta))/mibs(benchstat.Median(tb)))
	if left := labelled(t, c, LabelRunner+"=berth-bench"); len(left) > 0 {
		t.Errorf("the benchmark left %v", left)
	}
}
