package ssh_test

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/berthci/berth/internal/benchstat"
	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/ssh"
	"github.com/berthci/berth/sshexec/sshdtest"
)

// TestBenchmarkTrivialJob measures a trivial job through the ssh executor
// against `ssh host true` with OpenSSH's client, interleaved (A B B A …)
// in the same run, against the same sshd on 127.0.0.1. It runs only when
// BERTH_SSH_BENCH is set (to the number of runs of each, default 40):
//
//	BERTH_SSH_BENCH=40 go test -run TestBenchmarkTrivialJob -v ./ssh
func TestBenchmarkTrivialJob(t *testing.T) {
	runs, _ := strconv.Atoi(os.Getenv("BERTH_SSH_BENCH"))
	if os.Getenv("BERTH_SSH_BENCH") == "" {
		t.Skip("a benchmark: set BERTH_SSH_BENCH=<runs> to run it")
	}
	if runs <= 0 {
		runs = 40
	}
	sshClient, err := exec.LookPath("ssh")
	if err != nil {
		t.Skip("OpenSSH's client is missing: apt-get install openssh-client")
	}
	s := sshdtest.Start(t)
	e := ssh.New(ssh.WithLogger(slog.New(slog.DiscardHandler)))
	if err := e.Configure(t.Context(), settingsFor(s)); err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	var prepare, run, cleanup []time.Duration
	job := func(i int) time.Duration {
		start := time.Now()
		h, err := e.Prepare(ctx, sdk.Job{ID: fmt.Sprintf("bench-%d", i), Shell: "sh"})
		if err != nil {
			t.Fatal(err)
		}
		t1 := time.Now()
		code, err := e.Run(ctx, h, sdk.Step{Name: "script", Script: "true", Shell: "sh"}, sdk.Output{Stdout: discard{}, Stderr: discard{}})
		if err != nil || code != 0 {
			t.Fatalf("Run: %d, %v", code, err)
		}
		t2 := time.Now()
		if err := e.Cleanup(ctx, h); err != nil {
			t.Fatal(err)
		}
		end := time.Now()
		prepare, run, cleanup = append(prepare, t1.Sub(start)), append(run, t2.Sub(t1)), append(cleanup, end.Sub(t2))
		return end.Sub(start)
	}
	// OpenSSH 9.2's client prefers the post-quantum key exchange
	// sntrup761x25519-sha512, which Go's client does not offer; with
	// curve25519-sha256 (what Go's negotiates here) it does the same work.
	openssh := func(kex string) time.Duration {
		args := []string{"-F", "/dev/null", "-i", s.Account.ClientKeyFile,
			"-o", "UserKnownHostsFile=" + s.KnownHostsFile, "-o", "StrictHostKeyChecking=yes",
			"-o", "BatchMode=yes", "-o", "ControlMaster=no", "-o", "ControlPath=none",
			"-p", strconv.Itoa(s.Port)}
		if kex != "" {
			args = append(args, "-o", "KexAlgorithms="+kex)
		}
		start := time.Now()
		cmd := exec.Command(sshClient, append(args, s.Account.User+"@"+s.Host, "true")...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("ssh host true: %v: %s", err, out)
		}
		return time.Since(start)
	}
	job(-1) // warm-up of all
	openssh("")
	openssh("curve25519-sha256")
	prepare, run, cleanup = nil, nil, nil
	var jobs, sshs, sshsCurve []time.Duration
	for i := range runs {
		if i%2 == 0 {
			jobs = append(jobs, job(i))
			sshs = append(sshs, openssh(""))
			sshsCurve = append(sshsCurve, openssh("curve25519-sha256"))
		} else {
			sshsCurve = append(sshsCurve, openssh("curve25519-sha256"))
			sshs = append(sshs, openssh(""))
			jobs = append(jobs, job(i))
		}
	}
	var load string
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		load = string(b[:len(b)-1])
	}
	t.Logf("%d interleaved runs of each; %d CPUs, %s, load at the end %s", runs, runtime.NumCPU(), runtime.Version(), load)
	t.Logf("| metric | median | p95 |")
	t.Logf("| ssh executor, trivial job (Prepare → Run `true` → Cleanup), new connection | %s | %s |", benchstat.Median(jobs), benchstat.Quantile(jobs, 0.95))
	t.Logf("| OpenSSH client, `ssh host true` (default key exchange, sntrup761x25519) | %s | %s |", benchstat.Median(sshs), benchstat.Quantile(sshs, 0.95))
	t.Logf("| OpenSSH client, `ssh -o KexAlgorithms=curve25519-sha256 host true` | %s | %s |", benchstat.Median(sshsCurve), benchstat.Quantile(sshsCurve, 0.95))
	t.Logf("ratio of medians: %.2f× (default kex), %.2f× (curve25519); within a job: Prepare %s, Run %s, Cleanup %s (medians)",
		float64(benchstat.Median(jobs))/float64(benchstat.Median(sshs)), float64(benchstat.Median(jobs))/float64(benchstat.Median(sshsCurve)),
		benchstat.Median(prepare), benchstat.Median(run), benchstat.Median(cleanup))
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
