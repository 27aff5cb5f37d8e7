package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berthci/berth/host/gitlab/gitlabtest"
)

// TestGitLabRunnerBenchmark measures berth run-single against the test
// coordinator with trivial jobs (echo ok, shell executor): pick → final
// PUT per job, wall time per job at concurrent=1, jobs/s at concurrent=8,
// and berth's peak RSS. It only runs with BERTH_BENCH_GITLAB=1 (figures
// for docs/BENCHMARKS.md); BERTH_BENCH_LOG sets berth's log level and
// BERTH_BENCH_LOGFILE keeps its log:
//
//	BERTH_BENCH_GITLAB=1 go test ./cmd/berth -run TestGitLabRunnerBenchmark -v
func TestGitLabRunnerBenchmark(t *testing.T) {
	if os.Getenv("BERTH_BENCH_GITLAB") != "1" {
		t.Skip("set BERTH_BENCH_GITLAB=1 to measure")
	}
	for _, sources := range []bool{false, true} {
		name := "GIT_STRATEGY=none"
		if sources {
			name = "sources fetched (git http-backend, GIT_STRATEGY=fetch)"
		}
		t.Run(name, func(t *testing.T) {
			seq := benchRun(t, 1, 50, sources)
			par := benchRun(t, 8, 200, sources)
			t.Logf("RESULT %s | pick→final PUT median %s p95 %s (concurrent=1) | wall per job at concurrent=1: %s (50 jobs) | concurrent=8: %.1f jobs/s (200 jobs), pick→final median %s p95 %s | peak RSS berth %s MiB (c=1) %s MiB (c=8), shell plugin %s MiB",
				name, seq.median, seq.p95, seq.perJob, par.jobsPerSec, par.median, par.p95, mib(seq.rss), mib(par.rss), mib(max(seq.pluginRSS, par.pluginRSS)))
		})
	}
}

type benchResult struct {
	median, p95, perJob time.Duration
	jobsPerSec          float64
	rss, pluginRSS      int64 // KiB
}

func mib(kib int64) string { return strconv.FormatFloat(float64(kib)/1024, 'f', 1, 64) }

// vmHWM reads a process's peak resident set size in KiB.
func vmHWM(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return 0
}

func benchRun(t *testing.T, concurrent, jobs int, sources bool) benchResult {
	coord := gitlabtest.New(t)
	token := coord.AddRunner()
	repo, sha := runnerRepo(coord)
	dir := t.TempDir()
	var vars []gitlabtest.Var
	if !sources {
		vars = []gitlabtest.Var{{Key: "GIT_STRATEGY", Value: "none"}}
	}
	var ids []int64
	for range jobs {
		ids = append(ids, coord.AddJob(gitlabtest.JobSpec{Name: "trivial", Repo: repo.Path, SHA: sha, Variables: vars, Script: []string{"echo ok"}, AllowGitFetch: true}))
	}
	cmd, out := startBerth(t, dir, "run-single", "--url", coord.URL, "--token", token, "--shell-builds-dir", filepath.Join(dir, "builds"),
		"--concurrent", strconv.Itoa(concurrent), "--max-builds", strconv.Itoa(jobs), "-d", dir, "--log-level", firstNonEmpty(os.Getenv("BERTH_BENCH_LOG"), "warn"))
	// Sample the peak RSS of berth and of its plugin while they run.
	var res benchResult
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			res.rss = max(res.rss, vmHWM(cmd.Process.Pid))
			for _, pid := range childPids(cmd.Process.Pid) {
				cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
				if strings.Contains(string(cmdline), serveFlag) {
					res.pluginRSS = max(res.pluginRSS, vmHWM(pid))
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	for _, id := range ids {
		j := coord.WaitFinal(t, id, 5*time.Minute)
		if j.Final.State != "success" {
			t.Fatalf("job %d: %+v\n%s", id, *j.Final, j.Trace)
		}
	}
	var lat []time.Duration
	var last time.Time
	for _, id := range ids {
		j := coord.Job(id)
		lat = append(lat, j.FinalAt.Sub(j.PickedAt))
		if j.FinalAt.After(last) {
			last = j.FinalAt
		}
	}
	first := coord.Job(ids[0]).PickedAt
	slices.Sort(lat)
	res.median = lat[len(lat)/2].Round(100 * time.Microsecond)
	res.p95 = lat[len(lat)*95/100].Round(100 * time.Microsecond)
	res.perJob = (last.Sub(first) / time.Duration(jobs)).Round(100 * time.Microsecond)
	res.jobsPerSec = float64(jobs) / last.Sub(first).Seconds()
	if code := waitExit(t, cmd, out, time.Minute); code != 0 {
		t.Errorf("run-single exited %d:\n%s", code, out)
	}
	close(stop)
	<-sampled
	if p := os.Getenv("BERTH_BENCH_LOGFILE"); p != "" {
		os.WriteFile(p, []byte(out.String()), 0o644)
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		res.rss = max(res.rss, ru.Maxrss) // KiB on Linux
	}
	return res
}
