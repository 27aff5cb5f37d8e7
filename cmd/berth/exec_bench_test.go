package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// BenchmarkExecDAG20 runs examples/dag-20 (20 trivial jobs, a critical
// path of 5) with berth exec on the shell executor and reports, next to
// the wall time of the whole command (plugin start included):
//
//   - run-ms: the pipeline's own time (pipeline_finished's duration);
//
//   - critical-path-bash-ms: 5 × the median `bash -c true`, measured in
//     the same benchmark, alternating with the pipeline runs;
//
//   - all-jobs-bash-ms: 20 × the median `bash -c true` / --concurrency.
//
//     go test ./cmd/berth -run XXX -bench ExecDAG20 -benchtime 10x
func BenchmarkExecDAG20(b *testing.B) {
	const jobs, criticalPath = 20, 5
	concurrency := "2"
	var bashTimes, runTimes []time.Duration
	bash := func() {
		start := time.Now()
		if err := exec.Command("bash", "-c", "true").Run(); err != nil {
			b.Fatal(err)
		}
		bashTimes = append(bashTimes, time.Since(start))
	}
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		for range 5 {
			bash()
		}
		b.StartTimer()
		cmd := exec.Command(berthBin, "exec", "--json", "--concurrency", concurrency, "-C", "../../examples/dag-20")
		cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+b.TempDir(), "XDG_CACHE_HOME="+b.TempDir())
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		b.StopTimer()
		if err != nil {
			b.Fatalf("berth exec: %v\n%s", err, out.String())
		}
		ok := 0
		sc := bufio.NewScanner(&out)
		for sc.Scan() {
			var e jsonEvent
			if json.Unmarshal(sc.Bytes(), &e) != nil {
				continue
			}
			if e.Type == "job_finished" && e.Status == "success" {
				ok++
			}
			if e.Type == "pipeline_finished" && e.DurationMS != nil {
				runTimes = append(runTimes, time.Duration(*e.DurationMS)*time.Millisecond)
			}
		}
		if ok != jobs {
			b.Fatalf("%d of %d jobs succeeded:\n%s", ok, jobs, out.String())
		}
		b.StartTimer()
	}
	bashMedian := medianDuration(bashTimes)
	b.ReportMetric(float64(medianDuration(runTimes).Microseconds())/1000, "run-ms")
	b.ReportMetric(float64((criticalPath*bashMedian).Microseconds())/1000, "critical-path-bash-ms")
	b.ReportMetric(float64((jobs*bashMedian/2).Microseconds())/1000, "all-jobs-bash-ms")
	b.ReportMetric(float64(bashMedian.Microseconds())/1000, "bash-true-ms")
	if !strings.Contains(concurrency, "2") {
		b.Fatal("the all-jobs figure assumes --concurrency 2")
	}
}

func medianDuration(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
