package runner

import (
	"bytes"
	"context"
	"fmt"
	"hash/crc32"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-plugin"

	"github.com/berthci/berth/host/gitlab"
	"github.com/berthci/berth/host/gitlab/gitlabtest"
	"github.com/berthci/berth/host/job"
	"github.com/berthci/berth/host/sources"
	"github.com/berthci/berth/host/spool"
	"github.com/berthci/berth/internal/syncbuf"
	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/shell"
)

// shellBackend serves the real shell executor over real gRPC in this
// process (go-plugin's test connection).
func shellBackend(t *testing.T) Backend {
	t.Helper()
	c, _ := plugin.TestPluginGRPCConn(t, false, map[string]plugin.Plugin{sdk.PluginName: &sdk.GRPCPlugin{Impl: shell.New()}})
	t.Cleanup(func() { c.Close() })
	raw, err := c.Dispense(sdk.PluginName)
	if err != nil {
		t.Fatal(err)
	}
	cl := raw.(*sdk.Client)
	ctx := context.Background()
	if err := cl.Configure(ctx, map[string]any{"builds_dir": t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	info, err := cl.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return Backend{Jobs: &job.Runner{Executor: cl, Info: info, GracePeriod: 2 * time.Second, Version: "test"}, Info: info}
}

type env struct {
	coord    *gitlabtest.Server
	repo     *gitlabtest.Repo
	sha      string
	token    string
	svc      *Service
	log      *syncbuf.Buffer
	spoolDir string
	cacheDir string
	cancel   context.CancelFunc
	done     chan error
}

type envOption func(*Options, *Settings)

// start runs a Service against a fresh test coordinator; jobs may be added
// before or after.
func start(t *testing.T, coord *gitlabtest.Server, opts ...envOption) *env {
	t.Helper()
	if coord == nil {
		coord = gitlabtest.New(t)
	}
	e := &env{coord: coord, token: coord.AddRunner(), log: &syncbuf.Buffer{}, spoolDir: t.TempDir(), cacheDir: t.TempDir()}
	e.repo = coord.CreateRepo("group/project", map[string]string{"README.md": "hello\n"})
	e.sha = gitlabtest.Git(t, e.repo.Work, "rev-parse", "HEAD")
	be := shellBackend(t)
	client, err := gitlab.NewClient(coord.URL, gitlab.Options{MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, UserAgent: "berth test"})
	if err != nil {
		t.Fatal(err)
	}
	o := Options{
		Log: slog.New(slog.NewTextHandler(e.log, &slog.HandlerOptions{Level: slog.LevelDebug})), Version: "test", Revision: "abc",
		SystemID: "s_0123456789ab", Spool: spool.Dir{Path: e.spoolDir},
		Client:        func(string) (API, error) { return client, nil },
		Backend:       func(context.Context, RunnerConfig) (Backend, error) { return be, nil },
		Sources:       &sources.Fetcher{Dir: t.TempDir()},
		TraceInterval: 100 * time.Millisecond, ForceSendInterval: 300 * time.Millisecond,
		RetryMin: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond, UnhealthyInterval: time.Second,
		WorkDir: t.TempDir(),
	}
	s := Settings{Concurrent: 2, CheckInterval: 100 * time.Millisecond, Runners: []RunnerConfig{{
		Name: "test", URL: coord.URL, Token: e.token, Executor: "shell", CacheDir: e.cacheDir,
	}}}
	for _, f := range opts {
		f(&o, &s)
	}
	e.svc = New(o, s)
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	e.done = make(chan error, 1)
	go func() { e.done <- e.svc.Run(ctx) }()
	t.Cleanup(func() {
		e.svc.Stop()
		select {
		case <-e.done:
		case <-time.After(30 * time.Second):
			cancel()
			<-e.done
		}
		cancel()
		if t.Failed() {
			t.Logf("service log:\n%s", e.log.String())
		}
	})
	return e
}

const bound = 60 * time.Second

// add queues a job on the env's repository (at its first commit unless
// the spec says otherwise).
func (e *env) add(spec gitlabtest.JobSpec) int64 {
	if spec.Repo == "" {
		spec.Repo = e.repo.Path
	}
	if spec.SHA == "" {
		spec.SHA = e.sha
	}
	return e.coord.AddJob(spec)
}

// checkTrace checks that the final update's checksum and size describe
// the trace GitLab holds.
func checkTrace(t *testing.T, j gitlabtest.Job) {
	t.Helper()
	f := j.Final
	if f == nil {
		t.Fatal("no final state")
	}
	if !f.HasOutput {
		t.Fatal("the final update has no output summary")
	}
	want := fmt.Sprintf("crc32:%08x", crc32.ChecksumIEEE(j.Trace))
	if f.Checksum != want || f.Bytesize != int64(len(j.Trace)) {
		t.Errorf("final update says %s, %d bytes; GitLab holds %s, %d bytes", f.Checksum, f.Bytesize, want, len(j.Trace))
	}
}

func TestJobResults(t *testing.T) {
	tests := []struct {
		name       string
		script     []string
		after      []string
		wantState  string
		wantReason string
		wantExit   int
		wantTrace  []string
	}{
		{name: "success with multi-line output", script: []string{"echo line one", "printf 'line two\\nline three\\n'", "for i in 1 2 3; do echo \"n=$i\"; done"},
			wantState: "success", wantTrace: []string{"line one\n", "line two\nline three\n", "n=1\nn=2\nn=3\n", "Job succeeded"}},
		{name: "exit 7", script: []string{"echo before", "exit 7", "echo never"}, after: []string{"echo after ran"},
			wantState: "failed", wantReason: "script_failure", wantExit: 7, wantTrace: []string{"before\n", "after ran\n", "exit code 7"}},
	}
	e := start(t, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := e.add(gitlabtest.JobSpec{Name: tt.name, Script: tt.script, AfterScript: tt.after})
			j := e.coord.WaitFinal(t, id, bound)
			f := j.Final
			if f.State != tt.wantState || f.FailureReason != tt.wantReason || f.ExitCode != tt.wantExit {
				t.Errorf("final %+v, want state %s reason %q exit %d", *f, tt.wantState, tt.wantReason, tt.wantExit)
			}
			for _, w := range tt.wantTrace {
				if !bytes.Contains(j.Trace, []byte(w)) {
					t.Errorf("trace lacks %q:\n%s", w, j.Trace)
				}
			}
			if bytes.Contains(j.Trace, []byte("never")) {
				t.Errorf("the script went on after exit 7:\n%s", j.Trace)
			}
			checkTrace(t, j)
			// Two-phase commit: the first update is "running".
			if len(j.Updates) == 0 || j.Updates[0].State != "running" {
				t.Errorf("first update is not running: %+v", j.Updates)
			}
		})
	}
	// Every job call carries the job token; every request an X-Request-Id
	// and the runner's info on job requests.
	for _, r := range e.coord.Requests() {
		if strings.Contains(r.Path, ".git/") {
			continue
		}
		if r.Header.Get("X-Request-Id") == "" {
			t.Errorf("%s %s has no X-Request-Id", r.Method, r.Path)
		}
		if strings.HasPrefix(r.Path, "/api/v4/jobs/") && r.Path != "/api/v4/jobs/request" && r.Header.Get("Job-Token") == "" {
			t.Errorf("%s %s has no JOB-TOKEN", r.Method, r.Path)
		}
		if r.Method == "PATCH" && r.Header.Get("Content-Type") != "text/plain" {
			t.Errorf("PATCH has Content-Type %q", r.Header.Get("Content-Type"))
		}
	}
}

func TestFeaturesAreWhatBerthDoes(t *testing.T) {
	e := start(t, nil)
	id := e.add(gitlabtest.JobSpec{Name: "f", Script: []string{"true"}})
	e.coord.WaitFinal(t, id, bound)
	var body []byte
	for _, r := range e.coord.Requests() {
		if r.Path == "/api/v4/jobs/request" {
			body = r.Body
			break
		}
	}
	for _, want := range []string{`"executor":"shell"`, `"cancel_gracefully":true`, `"two_phase_job_commit":true`, `"trace_checksum":true`,
		`"image":false`, `"services":false`, `"session":false`, `"terminal":false`, `"vault_secrets":false`, `"multi_build_steps":false`,
		`"system_id":"s_0123456789ab"`, `"return_exit_code":true`, `"masking":true`} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("job request lacks %s:\n%s", want, body)
		}
	}
}

// loopScript prints a line every 0.1 s for a long time, after writing its
// shell's pid.
func loopScript(pidFile string) []string {
	return []string{
		"echo $$ > " + pidFile,
		"echo started",
		"for i in $(seq 1 600); do echo tick $i; sleep 0.1; done",
		"echo loop-finished",
	}
}

func alive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z'
}

func readPid(t *testing.T, path string) int {
	t.Helper()
	var pid int
	deadline := time.Now().Add(bound)
	for {
		data, err := os.ReadFile(path)
		if err == nil {
			if _, err := fmt.Sscan(string(data), &pid); err == nil {
				return pid
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no pid in %s", path)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestCancelFromGitLab(t *testing.T) {
	tests := []struct {
		name      string
		force     bool
		wantAfter bool
	}{
		{name: "canceling: graceful, after_script runs", force: false, wantAfter: true},
		{name: "canceled: 403, aborted at once", force: true, wantAfter: false},
	}
	e := start(t, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pidFile := filepath.Join(t.TempDir(), "pid")
			id := e.add(gitlabtest.JobSpec{Name: "cancel me", Script: loopScript(pidFile), AfterScript: []string{"echo after-script-ran"}})
			pid := readPid(t, pidFile)
			e.coord.WaitJob(t, id, bound, "output", func(j gitlabtest.Job) bool { return bytes.Contains(j.Trace, []byte("tick 2\n")) })
			if tt.force {
				e.coord.ForceCancel(id)
			} else {
				e.coord.Cancel(id)
			}
			// The script's shell ends, and the runner lets go of the job.
			deadline := time.Now().Add(bound)
			for alive(pid) || e.svc.Running() > 0 {
				if time.Now().After(deadline) {
					t.Fatalf("the job still runs %s after the cancel (shell alive: %v)", bound, alive(pid))
				}
				time.Sleep(20 * time.Millisecond)
			}
			j := e.coord.Job(id)
			if tt.force {
				if j.Final != nil {
					t.Errorf("GitLab took a final state for a canceled job: %+v", *j.Final)
				}
				if j.Status != "canceled" {
					t.Errorf("status %s", j.Status)
				}
				// The runner heard 403 at least once.
				saw403 := false
				for _, r := range e.coord.Requests() {
					if strings.Contains(r.Path, fmt.Sprint(id)) && r.Status == 403 {
						saw403 = true
					}
				}
				if !saw403 {
					t.Error("no request was answered 403")
				}
			} else {
				j = e.coord.WaitFinal(t, id, bound)
				if j.Final.State != "failed" || j.Final.FailureReason != "job_canceled" {
					t.Errorf("final %+v, want failed job_canceled", *j.Final)
				}
				if j.Status != "canceled" {
					t.Errorf("GitLab status %s, want canceled", j.Status)
				}
				checkTrace(t, j)
			}
			if bytes.Contains(j.Trace, []byte("loop-finished")) {
				t.Errorf("the script ran to its end:\n%s", j.Trace)
			}
			if got := bytes.Contains(j.Trace, []byte("after-script-ran\n")); got != tt.wantAfter {
				t.Errorf("after_script ran: %v, want %v; trace:\n%s", got, tt.wantAfter, j.Trace)
			}
		})
	}
}

func TestTraceResendsAfter416AndRetriesAfterErrors(t *testing.T) {
	coord := gitlabtest.New(t)
	var mu sync.Mutex
	patches := 0
	coord.SetHook(func(w http.ResponseWriter, r *http.Request, body []byte) bool {
		if r.Method != http.MethodPatch {
			return false
		}
		mu.Lock()
		defer mu.Unlock()
		patches++
		switch patches {
		case 1:
			// Say "accepted" but drop the bytes: GitLab lost a part.
			w.Header().Set("Range", "0-"+strconv.Itoa(len(body)))
			w.WriteHeader(http.StatusAccepted)
			return true
		case 3:
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			return true
		case 4:
			w.WriteHeader(http.StatusBadGateway)
			return true
		}
		return false
	})
	e := start(t, coord)
	var script []string
	for i := range 20 {
		script = append(script, fmt.Sprintf("echo part %d", i), "sleep 0.05")
	}
	id := e.add(gitlabtest.JobSpec{Name: "gap", Script: script})
	j := coord.WaitFinal(t, id, bound)
	if j.Final.State != "success" {
		t.Fatalf("final %+v", *j.Final)
	}
	checkTrace(t, j)
	for i := range 20 {
		if !bytes.Contains(j.Trace, []byte(fmt.Sprintf("part %d\n", i))) {
			t.Errorf("trace lacks part %d:\n%s", i, j.Trace)
		}
	}
	saw416 := false
	for _, r := range coord.Requests() {
		if r.Method == http.MethodPatch && r.Status == http.StatusRequestedRangeNotSatisfiable {
			saw416 = true
		}
	}
	if !saw416 {
		t.Error("GitLab never answered 416: the gap was not exercised")
	}
}
