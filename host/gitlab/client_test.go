package gitlab

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthci/berth/host/gitlab/gitlabtest"
)

func testClient(t *testing.T, url string) *Client {
	t.Helper()
	c, err := NewClient(url, Options{MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, UserAgent: "berth-test"})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCleanURL(t *testing.T) {
	tests := []struct{ in, want, err string }{
		{"https://gitlab.example.com/", "https://gitlab.example.com", ""},
		{"https://gitlab.example.com/ci", "https://gitlab.example.com", ""},
		{"https://gitlab.example.com/sub/ci/", "https://gitlab.example.com/sub", ""},
		{"https://user:pw@gitlab.example.com", "https://gitlab.example.com", ""},
		{"gitlab.example.com", "", "want http(s)://host"},
		{"ftp://x", "", "want http(s)://host"},
	}
	for _, tt := range tests {
		got, err := CleanURL(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("CleanURL(%q) error %v, want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("CleanURL(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestRegistrationFlows(t *testing.T) {
	coord := gitlabtest.New(t)
	c := testClient(t, coord.URL+"/")
	ctx := context.Background()
	glrt := coord.AddRunner()

	cr, err := c.Verify(ctx, glrt, "s_000000000001", Info{Name: "berth"})
	if err != nil || cr.Token != glrt || cr.ID == 0 {
		t.Fatalf("verify: %+v, %v", cr, err)
	}
	if _, err := c.Verify(ctx, "glrt-wrong", "s_000000000001", Info{}); !errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), "POST /api/v4/runners/verify") {
		t.Errorf("verify with a bad token: %v", err)
	}
	reg, err := c.Register(ctx, RegisterRequest{Description: "d", Token: coord.RegistrationToken(), RunUntagged: true, Locked: true, AccessLevel: "not_protected"})
	if err != nil || reg.Token == "" {
		t.Fatalf("register: %+v %v", reg, err)
	}
	r := coord.Runner(reg.Token)
	for k, want := range map[string]any{"description": "d", "run_untagged": true, "locked": true, "paused": false, "access_level": "not_protected"} {
		if r.Params[k] != want {
			t.Errorf("POST /runners %s = %v, want %v", k, r.Params[k], want)
		}
	}
	if _, err := c.Register(ctx, RegisterRequest{Token: "nope"}); !errors.Is(err, ErrForbidden) {
		t.Errorf("register with a bad token: %v", err)
	}
	if err := c.UnregisterManager(ctx, glrt, "s_000000000001"); err != nil {
		t.Errorf("unregister manager: %v", err)
	}
	if err := c.Unregister(ctx, reg.Token); err != nil || coord.Runner(reg.Token) != nil {
		t.Errorf("unregister: %v", err)
	}
	coord.DisableRegistrationTokens()
	if _, err := c.Register(ctx, RegisterRequest{Token: coord.RegistrationToken()}); err == nil || !strings.Contains(err.Error(), "410") {
		t.Errorf("register when tokens are disabled: %v", err)
	}
}

func TestSystemIDIsStable(t *testing.T) {
	path := filepath.Join(t.TempDir(), SystemIDFile)
	a, err := LoadSystemID(path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := LoadSystemID(path)
	if err != nil || a != b || !systemIDPattern.MatchString(a) || !strings.HasPrefix(a, "s_") {
		t.Errorf("ids %q, %q (%v)", a, b, err)
	}
	if err := os.WriteFile(path, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if c, err := LoadSystemID(path); err != nil || c == a || !systemIDPattern.MatchString(c) {
		t.Errorf("a damaged id file gives %q, %v", c, err)
	}
}

func TestRetriesHonourRetryAfter(t *testing.T) {
	var mu sync.Mutex
	calls := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls++
		n := calls
		mu.Unlock()
		switch n {
		case 1:
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
		case 2:
			w.WriteHeader(http.StatusBadGateway)
		default:
			w.Header().Set("X-GitLab-Last-Update", "abc")
			w.WriteHeader(http.StatusNoContent)
		}
	}))
	defer srv.Close()
	// The waits between attempts are recorded, not timed.
	var waits []time.Duration
	c, err := NewClient(srv.URL, Options{MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, UserAgent: "berth-test",
		Sleep: func(_ context.Context, d time.Duration) error { waits = append(waits, d); return nil }})
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.RequestJob(context.Background(), JobRequest{Token: "t"})
	if err != nil || res.Status != http.StatusNoContent || res.LastUpdate != "abc" || res.Job != nil {
		t.Fatalf("%+v %v", res, err)
	}
	if calls != 3 || len(waits) != 2 {
		t.Fatalf("%d attempts and %d waits, want 3 and 2", calls, len(waits))
	}
	if waits[0] != time.Second {
		t.Errorf("waited %s after a 429 with Retry-After: 1, want 1s (above MaxBackoff 50ms)", waits[0])
	}
	if waits[1] <= 0 || waits[1] > 50*time.Millisecond {
		t.Errorf("waited %s after a 502, want a backoff within MaxBackoff 50ms", waits[1])
	}
}

func TestJobCallsInterpretAnswers(t *testing.T) {
	type answer struct {
		status    int
		jobStatus string
		rng       string
	}
	var mu sync.Mutex
	var next answer
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		a := next
		mu.Unlock()
		if a.jobStatus != "" {
			w.Header().Set("Job-Status", a.jobStatus)
		}
		if a.rng != "" {
			w.Header().Set("Range", a.rng)
		}
		w.Header().Set("X-GitLab-Trace-Update-Interval", "7")
		w.WriteHeader(a.status)
	}))
	defer srv.Close()
	c := testClient(t, srv.URL)
	ctx := context.Background()
	tests := []struct {
		name                       string
		a                          answer
		wantOffset                 int64
		wantCancel, wantAbort, err bool
	}{
		{"202", answer{status: 202, jobStatus: "running"}, 15, false, false, false},
		{"202 canceling", answer{status: 202, jobStatus: "canceling"}, 15, true, false, false},
		{"416 resumes from Range", answer{status: 416, rng: "0-3"}, 3, false, false, false},
		{"416 without Range", answer{status: 416}, 10, false, false, true},
		{"403 canceled", answer{status: 403, jobStatus: "canceled"}, 10, false, true, false},
		{"500", answer{status: 500}, 10, false, false, true},
	}
	for _, tt := range tests {
		t.Run("PATCH "+tt.name, func(t *testing.T) {
			mu.Lock()
			next = tt.a
			mu.Unlock()
			r, err := c.PatchTrace(ctx, 1, "tok", 10, []byte("hello"))
			if (err != nil) != tt.err || r.Offset != tt.wantOffset || r.CancelRequested != tt.wantCancel || r.Abort != tt.wantAbort {
				t.Errorf("%+v, %v", r, err)
			}
			if err == nil && r.UpdateInterval != 7*time.Second {
				t.Errorf("update interval %s", r.UpdateInterval)
			}
		})
	}
	for _, tt := range []struct {
		name string
		a    answer
		want func(UpdateResult) bool
	}{
		{"200", answer{status: 200, jobStatus: "success"}, func(r UpdateResult) bool { return r.Status == 200 }},
		{"202", answer{status: 202, jobStatus: "running"}, func(r UpdateResult) bool { return r.Accepted }},
		{"412", answer{status: 412}, func(r UpdateResult) bool { return r.TraceInvalid }},
		{"200 canceling", answer{status: 200, jobStatus: "canceling"}, func(r UpdateResult) bool { return r.CancelRequested }},
		{"403", answer{status: 403}, func(r UpdateResult) bool { return r.Abort }},
	} {
		t.Run("PUT "+tt.name, func(t *testing.T) {
			mu.Lock()
			next = tt.a
			mu.Unlock()
			r, err := c.UpdateJob(ctx, 1, "tok", UpdateJobRequest{State: StateSuccess, Output: &TraceSummary{Checksum: "crc32:00000000"}})
			if err != nil || !tt.want(r) {
				t.Errorf("%+v, %v", r, err)
			}
		})
	}
}

func TestGarbageAnswersAreClearErrors(t *testing.T) {
	tests := []struct {
		name, ct, body string
		want           []string
	}{
		{"html", "text/html", "<html>maintenance</html>", []string{"POST /api/v4/jobs/request", "text/html", "maintenance"}},
		{"not json", "application/json", "{oops", []string{"POST /api/v4/jobs/request", "not JSON"}},
		{"no id", "application/json", `{"token":"x"}`, []string{`"id"`}},
		{"wrong type", "application/json", `{"id":5,"token":"x","variables":"no"}`, []string{"job 5", `"variables"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tt.ct)
				w.WriteHeader(http.StatusCreated)
				io.WriteString(w, tt.body)
			}))
			defer srv.Close()
			_, err := testClient(t, srv.URL).RequestJob(context.Background(), JobRequest{Token: "t"})
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("error %v is not a DecodeError", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestRedirectDropsTheJobToken(t *testing.T) {
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Job-Token") != "" {
			http.Error(w, "token leaked", http.StatusTeapot)
			return
		}
		io.WriteString(w, "zipdata")
	}))
	defer storage.Close()
	// 127.0.0.1 and localhost are different hosts for the client.
	target := strings.Replace(storage.URL, "127.0.0.1", "localhost", 1)
	gl := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target+"/object", http.StatusFound)
	}))
	defer gl.Close()
	var b strings.Builder
	if _, err := testClient(t, gl.URL).DownloadArtifact(context.Background(), 3, "secret", &b); err != nil || b.String() != "zipdata" {
		t.Errorf("%q, %v", b.String(), err)
	}
}

func TestDecodeJobReferenceFixture(t *testing.T) {
	// The shape of the reference's fixture (written out here, not copied).
	payload := map[string]any{
		"id": 10, "token": "job-token", "allow_git_fetch": false,
		"job_info":    map[string]any{"name": "test-job", "stage": "test", "project_id": 123, "project_name": "test-project", "project_jobs_running_on_instance_runners_count": "+Inf"},
		"git_info":    map[string]any{"repo_url": "https://gitlab-ci-token:x@gitlab.example.com/test/test-project.git", "ref": "main", "sha": "abcdef123456", "before_sha": "654321fedcba", "ref_type": "branch"},
		"runner_info": map[string]any{"timeout": 3600},
		"variables":   []any{map[string]any{"key": "CI_REF_NAME", "value": "main", "public": true, "file": true, "raw": true}},
		"steps": []any{map[string]any{"name": "script", "script": []string{"date", "ls -ls"}, "timeout": 3600, "when": "on_success", "allow_failure": false},
			map[string]any{"name": "after_script", "script": []string{"ls -ls"}, "timeout": 3600, "when": "always", "allow_failure": true}},
		"image":        map[string]any{"name": "ruby:3.3", "entrypoint": []string{"/bin/sh"}, "executor_opts": map[string]any{"docker": map[string]any{"platform": "arm64/v8"}}},
		"services":     []any{map[string]any{"name": "postgresql:9.5", "alias": "db-pg", "command": []string{"sleep", "30"}}},
		"artifacts":    []any{map[string]any{"name": "artifact.zip", "untracked": false, "paths": []string{"out/*"}, "when": "always", "expire_in": "7d"}},
		"cache":        []any{map[string]any{"key": "$CI_COMMIT_SHA", "untracked": false, "paths": []string{"vendor/*"}, "policy": "push"}},
		"credentials":  []any{map[string]any{"type": "Registry", "url": "http://registry.gitlab.example.com/", "username": "gitlab-ci-token", "password": "job-token"}},
		"dependencies": []any{map[string]any{"id": 9, "name": "other-job", "token": "other-job-token", "artifacts_file": map[string]any{"filename": "binaries.zip", "size": 13631488}}},
	}
	data, _ := json.Marshal(payload)
	j, err := DecodeJob(data)
	if err != nil {
		t.Fatal(err)
	}
	if j.ID != 10 || j.Token != "job-token" || j.JobInfo.ProjectID != 123 || j.GitInfo.Sha != "abcdef123456" || j.RunnerInfo.Timeout != 3600 ||
		len(j.Steps) != 2 || j.Steps[1].When != "always" || j.Image.Name != "ruby:3.3" || j.Services[0].Alias != "db-pg" ||
		j.Artifacts[0].ExpireIn != "7d" || j.Cache[0].Policy != "push" || j.Dependencies[0].ArtifactsFile.Size != 13631488 ||
		!j.Variables[0].File || j.Credentials[0].Password != "job-token" {
		t.Errorf("decoded %+v", j)
	}
}
