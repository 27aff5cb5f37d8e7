package runner

import (
	"archive/zip"
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berthci/berth/host/gitlab/gitlabtest"
)

func TestMaskedValuesNeverReachGitLab(t *testing.T) {
	e := start(t, nil)
	const secret = "s3cr3t-Value-42"
	id := e.add(gitlabtest.JobSpec{Name: "mask", Variables: []gitlabtest.Var{{Key: "SECRET", Value: secret, Masked: true}},
		Script: []string{`echo "$SECRET"`, `echo "x${SECRET}y"`, `echo "$CI_JOB_TOKEN"`, `echo "$CI_REPOSITORY_URL"`, `printf '%s' "$SECRET" >&2`}})
	j := e.coord.WaitFinal(t, id, bound)
	if j.Final.State != "success" {
		t.Fatalf("final %+v\n%s", *j.Final, j.Trace)
	}
	if n := bytes.Count(j.Trace, []byte("[MASKED]")); n < 5 {
		t.Errorf("want at least 5 [MASKED] in the trace, got %d:\n%s", n, j.Trace)
	}
	patches := 0
	for _, r := range e.coord.Requests() {
		if r.Method != http.MethodPatch {
			continue
		}
		patches++
		for _, s := range []string{secret, j.Token} {
			if bytes.Contains(r.Body, []byte(s)) {
				t.Errorf("a PATCH body holds %q:\n%s", s, r.Body)
			}
		}
	}
	if patches == 0 {
		t.Fatal("no PATCH seen")
	}
	if strings.Contains(e.log.String(), j.Token) {
		t.Errorf("berth's log holds the job token:\n%s", e.log.String())
	}
}

func randomText(n int) string {
	b := make([]byte, n/2)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func TestSourcesFromGitHTTPBackend(t *testing.T) {
	e := start(t, nil)
	// A large, incompressible file makes the first fetch big.
	sha1 := e.repo.Commit(map[string]string{"big.bin": randomText(600 << 10), "src/main.txt": "version one\n"}, "big file")
	id1 := e.add(gitlabtest.JobSpec{Name: "first", SHA: sha1, Script: []string{
		"git rev-parse HEAD", "cat src/main.txt", "git remote get-url origin",
		"grep -c glcbt- .git/config || echo no-token-in-git-config",
	}})
	j1 := e.coord.WaitFinal(t, id1, bound)
	if j1.Final.State != "success" {
		t.Fatalf("first job: %+v\n%s", *j1.Final, j1.Trace)
	}
	for _, want := range []string{sha1 + "\n", "version one\n", "no-token-in-git-config\n", "/group/project.git\n"} {
		if !bytes.Contains(j1.Trace, []byte(want)) {
			t.Errorf("first job's trace lacks %q:\n%s", want, j1.Trace)
		}
	}
	sizes := e.coord.GitResponseBytes()
	var first int64
	for _, n := range sizes {
		first += n
	}

	sha2 := e.repo.Commit(map[string]string{"src/main.txt": "version two\n", "new.txt": "new\n"}, "small change")
	id2 := e.add(gitlabtest.JobSpec{Name: "second", SHA: sha2, AllowGitFetch: true, Script: []string{"git rev-parse HEAD", "cat src/main.txt new.txt"}})
	j2 := e.coord.WaitFinal(t, id2, bound)
	if j2.Final.State != "success" {
		t.Fatalf("second job: %+v\n%s", *j2.Final, j2.Trace)
	}
	for _, want := range []string{sha2 + "\n", "version two\nnew\n"} {
		if !bytes.Contains(j2.Trace, []byte(want)) {
			t.Errorf("second job's trace lacks %q:\n%s", want, j2.Trace)
		}
	}
	var second int64
	for _, n := range e.coord.GitResponseBytes()[len(sizes):] {
		second += n
	}
	if first < 250<<10 {
		t.Errorf("the first fetch moved only %d bytes; the big file should be in it", first)
	}
	if second > 64<<10 || second == 0 {
		t.Errorf("the second fetch moved %d bytes (first %d): not incremental", second, first)
	}
	t.Logf("git bytes: first fetch %d, second %d", first, second)

	tests := []struct {
		name   string
		vars   []gitlabtest.Var
		script []string
	}{
		{"GIT_DEPTH=1", []gitlabtest.Var{{Key: "GIT_DEPTH", Value: "1"}}, []string{`test "$(git rev-list --count HEAD)" = 1`, "test -f new.txt"}},
		{"GIT_STRATEGY=none", []gitlabtest.Var{{Key: "GIT_STRATEGY", Value: "none"}}, []string{"test ! -e new.txt", "test ! -e .git"}},
		{"GIT_CHECKOUT=false", []gitlabtest.Var{{Key: "GIT_CHECKOUT", Value: "false"}}, []string{"test ! -e new.txt", "test -d .git"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := e.add(gitlabtest.JobSpec{Name: tt.name, SHA: sha2, Variables: tt.vars, Script: tt.script})
			j := e.coord.WaitFinal(t, id, bound)
			if j.Final.State != "success" {
				t.Errorf("%+v\n%s", *j.Final, j.Trace)
			}
		})
	}
}

func zipEntries(t *testing.T, data []byte) map[string]string {
	t.Helper()
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatalf("the archive is not a zip: %v", err)
	}
	out := map[string]string{}
	for _, f := range zr.File {
		if f.FileInfo().IsDir() {
			continue
		}
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(rc)
		rc.Close()
		out[f.Name] = string(b)
	}
	return out
}

func TestArtifactsAndDependencies(t *testing.T) {
	e := start(t, nil)
	producer := e.add(gitlabtest.JobSpec{Name: "producer", Script: []string{
		"mkdir -p out/sub", "echo A > out/a.txt", "echo B > out/b.log", "echo C > out/sub/c.txt",
		"echo '<testsuite name=\"t\"/>' > report.xml", "echo U > untracked.txt",
	}, Artifacts: []gitlabtest.ArtifactSpec{
		{Name: "build-$CI_JOB_NAME", Paths: []string{"out/"}, Exclude: []string{"out/*.log"}, ExpireIn: "1 week"},
		{Name: "junit.xml", Paths: []string{"report.xml"}, Type: "junit", Format: "gzip", When: "always"},
	}})
	j := e.coord.WaitFinal(t, producer, bound)
	if j.Final.State != "success" {
		t.Fatalf("%+v\n%s", *j.Final, j.Trace)
	}
	if len(j.Artifacts) != 2 {
		t.Fatalf("want 2 uploads, got %d", len(j.Artifacts))
	}
	archive, junit := j.Artifacts[0], j.Artifacts[1]
	if archive.FileName != "build-producer.zip" || archive.Type != "archive" || archive.Format != "zip" || archive.ExpireIn != "1 week" {
		t.Errorf("archive upload %q type %q format %q expire %q", archive.FileName, archive.Type, archive.Format, archive.ExpireIn)
	}
	got := zipEntries(t, archive.Data)
	want := map[string]string{"out/a.txt": "A\n", "out/sub/c.txt": "C\n"}
	if len(got) != len(want) || got["out/a.txt"] != "A\n" || got["out/sub/c.txt"] != "C\n" {
		t.Errorf("zip holds %v, want %v", got, want)
	}
	if junit.FileName != "junit.xml.gz" || junit.Type != "junit" || junit.Format != "gzip" {
		t.Errorf("junit upload %q type %q format %q", junit.FileName, junit.Type, junit.Format)
	}
	zr, err := gzip.NewReader(bytes.NewReader(junit.Data))
	if err != nil {
		t.Fatal(err)
	}
	report, _ := io.ReadAll(zr)
	if string(report) != "<testsuite name=\"t\"/>\n" || zr.Name != "report.xml" {
		t.Errorf("junit report %q (name %q)", report, zr.Name)
	}

	consumer := e.add(gitlabtest.JobSpec{Name: "consumer", Dependencies: []int64{producer}, Script: []string{"cat out/a.txt out/sub/c.txt", "test ! -e out/b.log"}})
	c := e.coord.WaitFinal(t, consumer, bound)
	if c.Final.State != "success" || !bytes.Contains(c.Trace, []byte("A\nC\n")) {
		t.Errorf("consumer: %+v\n%s", *c.Final, c.Trace)
	}

	untracked := e.add(gitlabtest.JobSpec{Name: "untracked", Script: []string{"echo U > untracked.txt", "echo M >> README.md"},
		Artifacts: []gitlabtest.ArtifactSpec{{Untracked: true}}})
	u := e.coord.WaitFinal(t, untracked, bound)
	if u.Final.State != "success" || len(u.Artifacts) != 1 {
		t.Fatalf("untracked: %+v, %d uploads\n%s", *u.Final, len(u.Artifacts), u.Trace)
	}
	if got := zipEntries(t, u.Artifacts[0].Data); len(got) != 1 || got["untracked.txt"] != "U\n" {
		t.Errorf("untracked artifacts hold %v, want only untracked.txt", got)
	}

	// A dependency whose artifacts are gone fails the job as GitLab names it.
	gone := e.add(gitlabtest.JobSpec{Name: "gone", Script: []string{"true"}})
	e.coord.WaitFinal(t, gone, bound)
	missing := e.add(gitlabtest.JobSpec{Name: "missing", Dependencies: []int64{gone}, Script: []string{"true"},
		Edit: func(p map[string]any) {
			p["dependencies"] = []map[string]any{{"id": gone, "name": "gone", "artifacts_file": map[string]any{"filename": "artifacts.zip", "size": 10}}}
		}})
	m := e.coord.WaitFinal(t, missing, bound)
	if m.Final.State != "failed" || m.Final.FailureReason != "missing_dependency_failure" {
		t.Errorf("missing dependency: %+v\n%s", *m.Final, m.Trace)
	}
}

func TestCache(t *testing.T) {
	e := start(t, nil)
	cacheSpec := []gitlabtest.CacheSpec{{Key: "deps-$CI_COMMIT_REF_NAME", Paths: []string{"vendor/"}}}
	first := e.add(gitlabtest.JobSpec{Name: "first", Cache: cacheSpec, Script: []string{"test ! -e vendor/lib.txt", "mkdir -p vendor", "echo cached-content > vendor/lib.txt"}})
	if j := e.coord.WaitFinal(t, first, bound); j.Final.State != "success" {
		t.Fatalf("first: %+v\n%s", *j.Final, j.Trace)
	}
	tests := []struct {
		name  string
		cache []gitlabtest.CacheSpec
	}{
		{"same key", cacheSpec},
		{"fallback key, pull only", []gitlabtest.CacheSpec{{Key: "other", Paths: []string{"vendor/"}, Policy: "pull", FallbackKeys: []string{"deps-main"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := e.add(gitlabtest.JobSpec{Name: "hit", Cache: tt.cache, Script: []string{"cat vendor/lib.txt"}})
			j := e.coord.WaitFinal(t, id, bound)
			if j.Final.State != "success" || !bytes.Contains(j.Trace, []byte("cached-content\n")) {
				t.Errorf("no cache hit: %+v\n%s", *j.Final, j.Trace)
			}
		})
	}
	// Caches are kept per project under cache_dir; "pull" saved nothing.
	entries, err := os.ReadDir(filepath.Join(e.cacheDir, "group", "project"))
	if err != nil || len(entries) != 1 {
		t.Errorf("cache_dir/group/project holds %v (%v), want one archive", entries, err)
	}
}

func TestIdleLongPollingAndLastUpdate(t *testing.T) {
	coord := gitlabtest.New(t)
	coord.SetLongPoll(300 * time.Millisecond)
	e := start(t, coord)
	deadline := time.Now().Add(bound)
	var reqs []gitlabtest.Request
	for {
		reqs = nil
		for _, r := range coord.Requests() {
			if r.Path == "/api/v4/jobs/request" {
				reqs = append(reqs, r)
			}
		}
		if len(reqs) >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d job requests", len(reqs))
		}
		time.Sleep(20 * time.Millisecond)
	}
	for i, r := range reqs {
		if r.Status != http.StatusNoContent {
			t.Errorf("request %d answered %d", i, r.Status)
		}
	}
	if bytes.Contains(reqs[0].Body, []byte("last_update")) {
		t.Errorf("the first request sends a last_update: %s", reqs[0].Body)
	}
	if !bytes.Contains(reqs[1].Body, []byte(`"last_update":"0"`)) {
		t.Errorf("the second request does not echo X-GitLab-Last-Update: %s", reqs[1].Body)
	}
	// A job queued while a request is held is handed out.
	id := e.add(gitlabtest.JobSpec{Name: "late", Script: []string{"echo late"}})
	if j := e.coord.WaitFinal(t, id, bound); j.Final.State != "success" {
		t.Errorf("%+v", *j.Final)
	}
}

func TestAsksAgainAtOnceWhenASlotFrees(t *testing.T) {
	coord := gitlabtest.New(t)
	repo := coord.CreateRepo("group/project", map[string]string{"README.md": "hello\n"})
	sha := gitlabtest.Git(t, repo.Work, "rev-parse", "HEAD")
	// Queued before berth starts: with a check interval of 10 minutes,
	// only asking again at once when a job ended runs all three in time.
	var ids []int64
	for i := range 3 {
		ids = append(ids, coord.AddJob(gitlabtest.JobSpec{Name: "n" + string(rune('a'+i)), Repo: repo.Path, SHA: sha, Script: []string{"echo hi"}}))
	}
	start(t, coord, func(o *Options, s *Settings) { s.Concurrent = 1; s.CheckInterval = 10 * time.Minute })
	for _, id := range ids {
		if j := coord.WaitFinal(t, id, 30*time.Second); j.Final.State != "success" {
			t.Errorf("%+v", *j.Final)
		}
	}
}

func TestUnusablePayloads(t *testing.T) {
	coord := gitlabtest.New(t)
	e := start(t, coord)
	bad := e.add(gitlabtest.JobSpec{Name: "bad", Script: []string{"true"}, Edit: func(p map[string]any) { p["steps"] = "not a list" }})
	j := coord.WaitFinal(t, bad, bound)
	if j.Final.State != "failed" || j.Final.FailureReason != "runner_system_failure" || !bytes.Contains(j.Trace, []byte(`"steps"`)) {
		t.Errorf("bad payload: %+v\n%s", *j.Final, j.Trace)
	}
	checkTrace(t, j)
	html := coord.AddJob(gitlabtest.JobSpec{Name: "html", Body: []byte("<html>Bad gateway</html>"), ContentType: "text/html"})
	deadline := time.Now().Add(bound)
	for !strings.Contains(e.log.String(), "text/html") {
		if time.Now().After(deadline) {
			t.Fatalf("no error about the HTML answer:\n%s", e.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(e.log.String(), "POST /api/v4/jobs/request") {
		t.Errorf("the error does not name the endpoint:\n%s", e.log.String())
	}
	// Never acknowledged: GitLab hands it out again (two-phase commit).
	if h := coord.Job(html); len(h.Updates) != 0 {
		t.Errorf("the unreadable job was acknowledged: %+v", h.Updates)
	}
}

func TestFinalStateAccepted202IsSentAgain(t *testing.T) {
	coord := gitlabtest.New(t)
	coord.AcceptFinalWith202(2)
	e := start(t, coord)
	id := e.add(gitlabtest.JobSpec{Name: "slow trace", Script: []string{"echo done"}})
	j := coord.WaitFinal(t, id, bound)
	finals := 0
	for _, u := range j.Updates {
		if u.State == "success" {
			finals++
		}
	}
	if finals != 3 || j.Final.State != "success" {
		t.Errorf("%d final updates (want 3: two answered 202), final %+v", finals, j.Final)
	}
}

// TestOutageThenResumeFromSpool: GitLab answers 502 to every job call
// while a job runs and ends; berth is stopped before GitLab comes back; a
// new berth on the same spool sends the rest of the trace and the final
// state.
func TestOutageThenResumeFromSpool(t *testing.T) {
	coord := gitlabtest.New(t)
	down := make(chan struct{})
	coord.SetHook(func(w http.ResponseWriter, r *http.Request, body []byte) bool {
		select {
		case <-down:
		default:
			return false
		}
		if strings.HasPrefix(r.URL.Path, "/api/v4/jobs/") && r.URL.Path != "/api/v4/jobs/request" {
			w.WriteHeader(http.StatusBadGateway)
			return true
		}
		return false
	})
	spoolDir := t.TempDir()
	e1 := start(t, coord, func(o *Options, s *Settings) { o.Spool.Path = spoolDir })
	var script []string
	for i := range 30 {
		script = append(script, "echo output line "+string(rune('A'+i%26)), "sleep 0.02")
	}
	gate := filepath.Join(t.TempDir(), "gate")
	id := e1.add(gitlabtest.JobSpec{Name: "outage", Script: append([]string{"echo first", "while [ ! -e " + gate + " ]; do sleep 0.02; done"}, script...)})
	coord.WaitJob(t, id, bound, "some trace", func(j gitlabtest.Job) bool { return bytes.Contains(j.Trace, []byte("first\n")) })
	close(down)
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// Wait until the job ended (its final state is in the spool).
	deadline := time.Now().Add(bound)
	for {
		entries, _ := filepath.Glob(filepath.Join(spoolDir, "*", "meta.json"))
		done := false
		for _, m := range entries {
			b, _ := os.ReadFile(m)
			done = done || bytes.Contains(b, []byte(`"final"`))
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			j := coord.Job(id)
			t.Fatalf("the job never ended (GitLab: status %s, final %+v, %d requests)", j.Status, j.Final, len(coord.Requests()))
		}
		time.Sleep(20 * time.Millisecond)
	}
	spooled, _ := filepath.Glob(filepath.Join(spoolDir, "*", "trace"))
	if len(spooled) != 1 {
		t.Fatalf("spool holds %v", spooled)
	}
	want, _ := os.ReadFile(spooled[0])
	e1.cancel() // berth stops while GitLab is down
	<-e1.done
	e1.done <- nil // let its cleanup return
	if coord.Job(id).Final != nil {
		t.Fatal("GitLab got a final state during the outage")
	}
	coord.SetHook(nil)
	start(t, coord, func(o *Options, s *Settings) { o.Spool.Path = spoolDir })
	j := coord.WaitFinal(t, id, bound)
	if j.Final.State != "success" {
		t.Errorf("final %+v", *j.Final)
	}
	if !bytes.Equal(j.Trace, want) {
		t.Errorf("GitLab's trace differs from the job's output:\n got %q\nwant %q", j.Trace, want)
	}
	checkTrace(t, j)
	// The entry goes once GitLab answered the final state.
	deadline = time.Now().Add(bound)
	for {
		left, _ := os.ReadDir(spoolDir)
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the spool still holds %v", left)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestReloadWhileAJobRuns(t *testing.T) {
	e := start(t, nil)
	gate := filepath.Join(t.TempDir(), "gate")
	long := e.add(gitlabtest.JobSpec{Name: "long", Script: []string{"echo \"before=${NEW_VAR:-unset}\"", "while [ ! -e " + gate + " ]; do sleep 0.05; done", "echo long-done"}})
	e.coord.WaitJob(t, long, bound, "its start", func(j gitlabtest.Job) bool { return bytes.Contains(j.Trace, []byte("before=")) })
	s := e.svc.currentSettings()
	rc := s.Runners[0]
	rc.Environment = []string{"NEW_VAR=after-reload"}
	s.Runners = []RunnerConfig{rc}
	e.svc.Apply(s)
	next := e.add(gitlabtest.JobSpec{Name: "next", Script: []string{"echo \"next=$NEW_VAR\""}})
	n := e.coord.WaitFinal(t, next, bound)
	if !bytes.Contains(n.Trace, []byte("next=after-reload\n")) {
		t.Errorf("the job after the reload lacks the new variable:\n%s", n.Trace)
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	l := e.coord.WaitFinal(t, long, bound)
	if l.Final.State != "success" || !bytes.Contains(l.Trace, []byte("before=unset\n")) || !bytes.Contains(l.Trace, []byte("long-done")) {
		t.Errorf("the running job was disturbed: %+v\n%s", *l.Final, l.Trace)
	}
}

func TestShutdownCancelsJobsAsFailed(t *testing.T) {
	e := start(t, nil)
	pidFile := filepath.Join(t.TempDir(), "pid")
	id := e.add(gitlabtest.JobSpec{Name: "victim", Script: loopScript(pidFile), AfterScript: []string{"echo after-ran"}})
	readPid(t, pidFile)
	e.svc.Stop()
	e.svc.CancelJobs("berth got SIGTERM")
	j := e.coord.WaitFinal(t, id, bound)
	if j.Final.State != "failed" || j.Final.FailureReason != "runner_system_failure" {
		t.Errorf("final %+v", *j.Final)
	}
	for _, want := range []string{"after-ran", "berth got SIGTERM"} {
		if !bytes.Contains(j.Trace, []byte(want)) {
			t.Errorf("trace lacks %q:\n%s", want, j.Trace)
		}
	}
	select {
	case err := <-e.done:
		e.done <- err
	case <-time.After(bound):
		t.Fatal("Run did not return after Stop")
	}
}

func TestPredefinedVariables(t *testing.T) {
	e := start(t, nil, func(o *Options, s *Settings) {
		s.Runners[0].Environment = []string{"FROM_CONFIG=cfg", "CI_JOB_NAME=overridden-by-gitlab"}
	})
	id := e.add(gitlabtest.JobSpec{Name: "vars", Script: []string{
		`echo "builds=$CI_BUILDS_DIR project=$CI_PROJECT_DIR"`, `test "$(dirname "$CI_PROJECT_DIR")" = "$CI_BUILDS_DIR"`, `test "$PWD" = "$CI_PROJECT_DIR"`,
		`echo "version=$CI_RUNNER_VERSION short=$CI_RUNNER_SHORT_TOKEN concurrent=$CI_CONCURRENT_ID/$CI_CONCURRENT_PROJECT_ID"`,
		`echo "server=$CI_SERVER_URL api=$CI_API_V4_URL job=$CI_JOB_NAME id=$CI_JOB_ID cfg=$FROM_CONFIG shared=$CI_SHARED_ENVIRONMENT ci=$CI"`,
	}})
	j := e.coord.WaitFinal(t, id, bound)
	if j.Final.State != "success" {
		t.Fatalf("%+v\n%s", *j.Final, j.Trace)
	}
	for _, want := range []string{
		"version=test short=" + shortToken(e.token) + " concurrent=0/0",
		"server=" + e.coord.URL + " api=" + e.coord.URL + "/api/v4 job=vars id=" + fmt.Sprint(id) + " cfg=cfg shared=true ci=true",
	} {
		if !bytes.Contains(j.Trace, []byte(want)) {
			t.Errorf("trace lacks %q:\n%s", want, j.Trace)
		}
	}
}

func TestSubmodulesUseTheJobTokenWithoutStoringIt(t *testing.T) {
	e := start(t, nil)
	sub := e.coord.CreateRepo("group/sub", map[string]string{"lib.txt": "from the submodule\n"})
	gitlabtest.Git(t, e.repo.Work, "-c", "protocol.file.allow=always", "submodule", "add", "-q", sub.Bare, "deps/sub")
	// As GitLab projects do: a URL relative to the project's.
	gitlabtest.Git(t, e.repo.Work, "config", "-f", ".gitmodules", "submodule.deps/sub.url", "../sub.git")
	sha := e.repo.Commit(nil, "add a submodule")
	id := e.add(gitlabtest.JobSpec{Name: "submodules", SHA: sha, Variables: []gitlabtest.Var{{Key: "GIT_SUBMODULE_STRATEGY", Value: "recursive"}},
		Script: []string{"cat deps/sub/lib.txt", "grep -rc glcbt- .git/config .git/modules/deps/sub/config || echo no-token-stored"}})
	j := e.coord.WaitFinal(t, id, bound)
	if j.Final.State != "success" || !bytes.Contains(j.Trace, []byte("from the submodule\n")) || !bytes.Contains(j.Trace, []byte("no-token-stored")) {
		t.Errorf("%+v\n%s", *j.Final, j.Trace)
	}
}
