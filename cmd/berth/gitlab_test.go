package main

import (
	"bytes"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berthci/berth/host/config"
	"github.com/berthci/berth/host/gitlab/gitlabtest"
	"github.com/berthci/berth/internal/syncbuf"
)

// startBerth starts the berth binary in the background; the test's end
// kills it if it still runs.
func startBerth(t *testing.T, dir string, args ...string) (*exec.Cmd, *syncbuf.Buffer) {
	t.Helper()
	cmd := exec.Command(berthBin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+t.TempDir())
	out := &syncbuf.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmd, out
}

// waitExit waits (bounded) for the process to end and returns its code.
func waitExit(t *testing.T, cmd *exec.Cmd, out *syncbuf.Buffer, bound time.Duration) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
		return cmd.ProcessState.ExitCode()
	case <-time.After(bound):
		t.Fatalf("berth still runs after %s:\n%s", bound, out)
		return -1
	}
}

func runnerRepo(coord *gitlabtest.Server) (*gitlabtest.Repo, string) {
	r := coord.CreateRepo("group/project", map[string]string{"README.md": "hello\n"})
	return r, strings.TrimSpace(string(must(exec.Command("git", "-C", r.Work, "rev-parse", "HEAD").Output())))
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

func TestRegisterVerifyListUnregister(t *testing.T) {
	coord := gitlabtest.New(t)
	glrt := coord.AddRunner()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.toml")
	buildsDir := filepath.Join(dir, "builds")
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantOut  string
	}{
		{"authentication token (verify)", []string{"--token", glrt, "--name", "ui-runner", "--shell-builds-dir", buildsDir}, 0, "registered successfully"},
		{"registration token (POST /runners)", []string{"--registration-token", coord.RegistrationToken(), "--name", "legacy", "--tag-list", "a,b", "--locked=false", "--maximum-timeout", "600"}, 0, "registered successfully"},
		{"glrt token refuses server-side settings", []string{"--token", glrt, "--name", "x", "--locked"}, 1, "cannot be used with a runner authentication token"},
		{"bad registration token", []string{"--registration-token", "wrong", "--name", "x"}, 1, "403 Forbidden"},
		{"executor refuses its settings: nothing registered", []string{"--registration-token", coord.RegistrationToken(), "--name", "bad", "--shell-shell", "zsh"}, 1, `setting "shell"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"register", "-n", "-c", cfg, "--url", coord.URL + "/", "--executor", "shell"}, tt.args...)
			out, code := berth(t, args...)
			if code != tt.wantCode || !strings.Contains(out, tt.wantOut) {
				t.Errorf("exit %d, want %d; output lacks %q:\n%s", code, tt.wantCode, tt.wantOut, out)
			}
		})
	}
	c, warnings, err := config.Load(cfg)
	if err != nil || len(warnings) > 0 {
		t.Fatalf("config.toml: %v %v", err, warnings)
	}
	if len(c.Runners) != 2 {
		t.Fatalf("config has %d runners, want 2", len(c.Runners))
	}
	ui, legacy := c.Runners[0], c.Runners[1]
	if ui.Token != glrt || ui.URL != coord.URL || ui.ExecutorSettings["builds_dir"] != buildsDir || ui.TokenObtainedAt.IsZero() {
		t.Errorf("ui runner in config: %+v", ui)
	}
	if legacy.Token == "" || legacy.Token == coord.RegistrationToken() || legacy.ID == 0 {
		t.Errorf("legacy runner in config: %+v", legacy)
	}
	reg := coord.Runner(legacy.Token)
	if reg == nil || reg.Params["tag_list"] != "a,b" || reg.Params["locked"] != false || reg.Params["run_untagged"] != false ||
		reg.Params["maximum_timeout"] != float64(600) || reg.Params["description"] != "legacy" {
		t.Errorf("POST /runners got %+v", reg)
	}
	// The system ID is kept next to config.toml and sent on verify.
	sid, err := os.ReadFile(filepath.Join(dir, ".runner_system_id"))
	if err != nil || !coord.Runner(glrt).Managers[strings.TrimSpace(string(sid))] {
		t.Errorf("system id %q (%v) not known to GitLab: %+v", sid, err, coord.Runner(glrt))
	}

	out, code := berth(t, "list", "-c", cfg)
	if code != 0 || !strings.Contains(out, "ui-runner") || !strings.Contains(out, "legacy") || strings.Contains(out, glrt) {
		t.Errorf("list (exit %d):\n%s", code, out)
	}
	out, code = berth(t, "verify", "-c", cfg)
	if code != 0 || strings.Count(out, "is valid") != 2 {
		t.Errorf("verify (exit %d):\n%s", code, out)
	}
	// Unregistering the legacy runner deletes it in GitLab; the glrt one
	// only loses this machine's manager.
	out, code = berth(t, "unregister", "-c", cfg, "--name", "legacy")
	if code != 0 || coord.Runner(legacy.Token) != nil {
		t.Errorf("unregister legacy (exit %d):\n%s", code, out)
	}
	out, code = berth(t, "unregister", "-c", cfg, "--all-runners")
	if code != 0 || coord.Runner(glrt) == nil || len(coord.Runner(glrt).Managers) != 0 {
		t.Errorf("unregister glrt (exit %d): %+v\n%s", code, coord.Runner(glrt), out)
	}
	if c, _, err := config.Load(cfg); err != nil || len(c.Runners) != 0 {
		t.Errorf("config after unregister: %+v %v", c, err)
	}

	// Registration tokens turned off in GitLab: the error says what to do.
	coord.DisableRegistrationTokens()
	out, code = berth(t, "register", "-n", "-c", cfg, "--url", coord.URL, "--executor", "shell", "--registration-token", coord.RegistrationToken())
	if code == 0 || !strings.Contains(out, "glrt-") {
		t.Errorf("410 (exit %d):\n%s", code, out)
	}
}

func TestRunSingleRunsJobsUntilMaxBuilds(t *testing.T) {
	coord := gitlabtest.New(t)
	token := coord.AddRunner()
	repo, sha := runnerRepo(coord)
	ok := coord.AddJob(gitlabtest.JobSpec{Name: "ok", Repo: repo.Path, SHA: sha, Script: []string{"echo hello from $CI_JOB_NAME", "cat README.md"}})
	bad := coord.AddJob(gitlabtest.JobSpec{Name: "bad", Repo: repo.Path, SHA: sha, Script: []string{"exit 7"}})
	dir := t.TempDir()
	cmd, out := startBerth(t, dir, "run-single", "--url", coord.URL, "--token", token, "--executor", "shell",
		"--shell-builds-dir", filepath.Join(dir, "builds"), "--max-builds", "2", "--check-interval", "100ms", "--working-directory", dir)
	if code := waitExit(t, cmd, out, time.Minute); code != 0 {
		t.Fatalf("run-single exited %d:\n%s", code, out)
	}
	j := coord.Job(ok)
	if j.Final == nil || j.Final.State != "success" || !bytes.Contains(j.Trace, []byte("\nhello from ok\n")) || !bytes.Contains(j.Trace, []byte("\nhello\n")) {
		t.Errorf("ok: %+v\n%s", j.Final, j.Trace)
	}
	b := coord.Job(bad)
	if b.Final == nil || b.Final.State != "failed" || b.Final.FailureReason != "script_failure" || b.Final.ExitCode != 7 {
		t.Errorf("bad: %+v", b.Final)
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func writeRunnerConfig(t *testing.T, path, text string) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func runnerConfigText(coord *gitlabtest.Server, token, dir, extra string) string {
	return fmt.Sprintf(`concurrent = 2
check_interval = 1
log_level = "debug"

[[runners]]
  name = "cfg-runner"
  url = %q
  token = %q
  executor = "shell"
  %s
  [runners.shell]
    builds_dir = %q
`, coord.URL, token, extra, filepath.Join(dir, "builds"))
}

func TestRunReloadsConfigWhileAJobRunsAndServesMetrics(t *testing.T) {
	coord := gitlabtest.New(t)
	token := coord.AddRunner()
	repo, sha := runnerRepo(coord)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.toml")
	writeRunnerConfig(t, cfg, runnerConfigText(coord, token, dir, `environment = ["STAGE_VAR=one"]`+"\n  unknown_key = 1"))
	addr := freePort(t)
	cmd, out := startBerth(t, dir, "run", "-c", cfg, "--listen-address", addr)
	gate := filepath.Join(dir, "gate")
	long := coord.AddJob(gitlabtest.JobSpec{Name: "long", Repo: repo.Path, SHA: sha,
		Script: []string{`echo "long sees $STAGE_VAR"`, "while [ ! -e " + gate + " ]; do sleep 0.05; done", "echo long-done"}})
	coord.WaitJob(t, long, time.Minute, "its start", func(j gitlabtest.Job) bool { return bytes.Contains(j.Trace, []byte("long sees one")) })
	if !strings.Contains(out.String(), `key \"unknown_key\" is not one berth supports`) {
		t.Errorf("no warning names the unknown key:\n%s", out)
	}
	// An invalid file is refused; the old config stays.
	writeRunnerConfig(t, cfg, "concurrent = -3\n")
	cmd.Process.Signal(syscall.SIGHUP)
	waitForOutput(t, out, "keeping the old one")
	// A valid change applies to the next job, not the running one.
	writeRunnerConfig(t, cfg, runnerConfigText(coord, token, dir, `environment = ["STAGE_VAR=two"]`))
	cmd.Process.Signal(syscall.SIGHUP)
	waitForOutput(t, out, "config reloaded")
	next := coord.AddJob(gitlabtest.JobSpec{Name: "next", Repo: repo.Path, SHA: sha, Script: []string{`echo "next sees $STAGE_VAR"`}})
	n := coord.WaitFinal(t, next, time.Minute)
	if !bytes.Contains(n.Trace, []byte("next sees two")) {
		t.Errorf("the next job did not get the new config:\n%s", n.Trace)
	}
	os.WriteFile(gate, nil, 0o644)
	l := coord.WaitFinal(t, long, time.Minute)
	if l.Final.State != "success" || !bytes.Contains(l.Trace, []byte("long-done")) {
		t.Errorf("the running job was disturbed by the reload: %+v\n%s", l.Final, l.Trace)
	}

	for _, tc := range []struct{ path, want string }{
		{"/healthz", "ok"},
		{"/metrics", `berth_jobs_total{executor="shell",state="success"} 2`},
		{"/metrics", `berth_gitlab_requests_total{endpoint="jobs/request",status="201"} 2`},
		{"/metrics", "berth_job_duration_seconds_bucket"},
		{"/metrics", "berth_trace_bytes_sent_total"},
		{"/metrics", `berth_plugin_restarts_total{executor="shell"} 0`},
		{"/metrics", `berth_jobs_running{executor="shell"} 0`},
	} {
		resp, err := http.Get("http://" + addr + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(body), tc.want) {
			t.Errorf("%s lacks %q:\n%s", tc.path, tc.want, body)
		}
	}

	// SIGQUIT: no new jobs; exit when the running one ended.
	gate2 := filepath.Join(dir, "gate2")
	last := coord.AddJob(gitlabtest.JobSpec{Name: "last", Repo: repo.Path, SHA: sha, Script: []string{"echo last-started", "while [ ! -e " + gate2 + " ]; do sleep 0.05; done"}})
	coord.WaitJob(t, last, time.Minute, "its start", func(j gitlabtest.Job) bool { return bytes.Contains(j.Trace, []byte("last-started")) })
	cmd.Process.Signal(syscall.SIGQUIT)
	waitForOutput(t, out, "SIGQUIT")
	after := coord.AddJob(gitlabtest.JobSpec{Name: "after-quit", Repo: repo.Path, SHA: sha, Script: []string{"true"}})
	os.WriteFile(gate2, nil, 0o644)
	if code := waitExit(t, cmd, out, time.Minute); code != 0 {
		t.Errorf("berth run exited %d after SIGQUIT:\n%s", code, out)
	}
	if f := coord.Job(last).Final; f == nil || f.State != "success" {
		t.Errorf("the job running at SIGQUIT: %+v", f)
	}
	if j := coord.Job(after); j.Payload != nil {
		t.Errorf("a job was taken after SIGQUIT")
	}
}

func waitForOutput(t *testing.T, out *syncbuf.Buffer, want string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(out.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("output never had %q:\n%s", want, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestSIGTERMCancelsJobsAndReportsThem(t *testing.T) {
	coord := gitlabtest.New(t)
	token := coord.AddRunner()
	repo, sha := runnerRepo(coord)
	dir := t.TempDir()
	cmd, out := startBerth(t, dir, "run-single", "--url", coord.URL, "--token", token, "--shell-builds-dir", filepath.Join(dir, "builds"),
		"--check-interval", "100ms", "--shutdown-timeout", "20s", "-d", dir)
	id := coord.AddJob(gitlabtest.JobSpec{Name: "victim", Repo: repo.Path, SHA: sha, Script: []string{"echo started", "sleep 600"}, AfterScript: []string{"echo after-ran"}})
	coord.WaitJob(t, id, time.Minute, "its start", func(j gitlabtest.Job) bool { return bytes.Contains(j.Trace, []byte("started")) })
	cmd.Process.Signal(syscall.SIGTERM)
	if code := waitExit(t, cmd, out, 30*time.Second); code != 0 {
		t.Errorf("exit %d:\n%s", code, out)
	}
	j := coord.Job(id)
	if j.Final == nil || j.Final.State != "failed" || j.Final.FailureReason != "runner_system_failure" {
		t.Fatalf("final %+v\n%s", j.Final, out)
	}
	if !bytes.Contains(j.Trace, []byte("after-ran")) || !bytes.Contains(j.Trace, []byte("berth received terminated")) {
		t.Errorf("trace:\n%s", j.Trace)
	}
}

// TestOutage502ThenSIGKILLThenRestart is the acceptance scenario: GitLab
// answers 502 for 30 s while a job runs and ends; berth is SIGKILLed after
// the job ended but before GitLab came back; a restarted berth gets GitLab
// the final state and the trace, byte for byte.
func TestOutage502ThenSIGKILLThenRestart(t *testing.T) {
	coord := gitlabtest.New(t)
	token := coord.AddRunner()
	repo, sha := runnerRepo(coord)
	var mu sync.Mutex
	var downUntil time.Time
	coord.SetHook(func(w http.ResponseWriter, r *http.Request, body []byte) bool {
		mu.Lock()
		down := time.Now().Before(downUntil)
		mu.Unlock()
		if down && r.URL.Path != "/api/v4/jobs/request" {
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusBadGateway)
			io.WriteString(w, "<html>502 Bad Gateway</html>")
			return true
		}
		return false
	})
	dir := t.TempDir()
	spoolDir := filepath.Join(dir, "spool")
	args := []string{"run-single", "--url", coord.URL, "--token", token, "--shell-builds-dir", filepath.Join(dir, "builds"),
		"--check-interval", "100ms", "-d", dir, "--spool-dir", spoolDir}
	cmd, out := startBerth(t, dir, args...)
	gate := filepath.Join(dir, "gate")
	script := []string{"echo job begins", "while [ ! -e " + gate + " ]; do sleep 0.05; done"}
	for i := range 50 {
		script = append(script, fmt.Sprintf("echo 'line %02d of the output during the outage'", i))
	}
	id := coord.AddJob(gitlabtest.JobSpec{Name: "outage", Repo: repo.Path, SHA: sha, Script: script})
	coord.WaitJob(t, id, time.Minute, "the first trace", func(j gitlabtest.Job) bool { return bytes.Contains(j.Trace, []byte("job begins")) })
	mu.Lock()
	downUntil = time.Now().Add(30 * time.Second)
	mu.Unlock()
	os.WriteFile(gate, nil, 0o644)
	// The job ends during the outage: its final state lands in the spool.
	var metaPath string
	deadline := time.Now().Add(25 * time.Second)
	for {
		metas, _ := filepath.Glob(filepath.Join(spoolDir, "*", "meta.json"))
		if len(metas) == 1 {
			if b, _ := os.ReadFile(metas[0]); bytes.Contains(b, []byte(`"final"`)) {
				metaPath = metas[0]
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the job did not end in the spool during the outage:\n%s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	want, err := os.ReadFile(filepath.Join(filepath.Dir(metaPath), "trace"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if coord.Job(id).Final != nil {
		t.Fatal("GitLab got the final state during the outage")
	}
	// GitLab comes back after its 30 s; then berth starts again.
	mu.Lock()
	wait := time.Until(downUntil)
	mu.Unlock()
	time.Sleep(wait)
	cmd2, out2 := startBerth(t, dir, args...)
	j := coord.WaitFinal(t, id, time.Minute)
	if j.Final.State != "success" {
		t.Errorf("final %+v", *j.Final)
	}
	if !bytes.Equal(j.Trace, want) {
		t.Errorf("GitLab's trace is not the job's output:\n got %q\nwant %q", j.Trace, want)
	}
	sum := fmt.Sprintf("crc32:%08x", crc32.ChecksumIEEE(j.Trace))
	if j.Final.Checksum != sum || j.Final.Bytesize != int64(len(j.Trace)) {
		t.Errorf("final checksum %s/%d, trace %s/%d", j.Final.Checksum, j.Final.Bytesize, sum, len(j.Trace))
	}
	for i := range 50 {
		if !bytes.Contains(j.Trace, []byte(fmt.Sprintf("line %02d of the output", i))) {
			t.Errorf("line %d missing", i)
		}
	}
	cmd2.Process.Signal(syscall.SIGQUIT)
	waitExit(t, cmd2, out2, time.Minute)
}
