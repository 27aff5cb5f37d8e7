// Package gitlabtest is a stand-in for GitLab's runner-facing API v4, for
// tests only. GitLab itself (Rails, Workhorse, Gitaly, PostgreSQL, Redis)
// cannot run on a test machine, so this coordinator implements what a
// runner sees of it, written from shared/reference/gitlab-runner-api.md:
// registration (POST /runners, /runners/verify, DELETE /runners and
// /runners/managers), job requests with last_update long polling, the
// two-phase job commit, state PUTs with Job-Status, trace PATCHes with
// GitLab's append-at-offset semantics and 416 answers, artifact upload and
// download, and graceful (canceling) and forced (canceled) cancels. It
// serves the jobs' repositories with Debian's git http-backend (smart
// HTTP), behind the job token as GitLab does.
//
// It records every request, and a hook can answer any request in its
// place (409, 416, 429, 502 on demand). It builds job payloads as a map
// from the reference's field names, independently of the client's types.
// It listens on 127.0.0.1 only.
package gitlabtest

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Request is one request the coordinator got.
type Request struct {
	Method string
	Path   string
	Query  string
	Header http.Header
	Body   []byte
	// Status is what the coordinator answered.
	Status int
}

// StateUpdate is one PUT /jobs/:id as the coordinator read it.
type StateUpdate struct {
	State         string
	FailureReason string
	ExitCode      int
	Checksum      string
	Bytesize      int64
	HasOutput     bool
}

// Artifact is an uploaded archive.
type Artifact struct {
	FileName string
	Type     string
	Format   string
	ExpireIn string
	Data     []byte
}

// Var is a job variable.
type Var struct {
	Key, Value                string
	Masked, File, Raw, Public bool
}

// ArtifactSpec is one entry of the job's artifacts.
type ArtifactSpec struct {
	Name      string
	Paths     []string
	Exclude   []string
	Untracked bool
	When      string
	Type      string // archive (default), junit, …
	Format    string // zip (default), gzip, raw
	ExpireIn  string
}

// CacheSpec is one entry of the job's cache.
type CacheSpec struct {
	Key          string
	Paths        []string
	Untracked    bool
	Policy       string
	When         string
	FallbackKeys []string
}

// JobSpec describes a job to hand out.
type JobSpec struct {
	Name        string
	Stage       string
	Script      []string
	AfterScript []string
	Variables   []Var
	// Timeout in seconds (3600 when zero).
	Timeout int
	// Repo is the project path ("group/project") of a repository made
	// with CreateRepo; SHA and Ref say what to check out.
	Repo, SHA, Ref string
	Depth          int
	AllowGitFetch  bool
	Artifacts      []ArtifactSpec
	Cache          []CacheSpec
	// Dependencies are jobs whose archive artifacts this job downloads.
	Dependencies []int64
	// Edit changes the payload before it is sent.
	Edit func(payload map[string]any)
	// Body, when set, is sent as the 201 body instead of the payload,
	// with ContentType (application/json when empty).
	Body        []byte
	ContentType string
}

// Job is a job and everything the runner told about it.
type Job struct {
	ID         int64
	Token      string
	PipelineID int64
	Spec       JobSpec
	// Status as GitLab has it: pending, running, canceling, canceled,
	// success, failed.
	Status    string
	assigned  bool
	Trace     []byte
	Updates   []StateUpdate
	Final     *StateUpdate
	Artifacts []Artifact
	// Payload is the 201 body sent.
	Payload []byte
	// PickedAt is when the job was handed out; FinalAt when its final
	// state arrived.
	PickedAt, FinalAt time.Time
}

// Runner is a registered runner.
type Runner struct {
	ID       int64
	Token    string
	Params   map[string]any
	Managers map[string]bool
	Paused   bool
}

// Server is the test coordinator.
type Server struct {
	URL string

	t       testing.TB
	srv     *httptest.Server
	gitRoot string

	mu                sync.Mutex
	requests          []Request
	jobs              map[int64]*Job
	order             []int64
	nextID            int64
	queueValue        int
	changed           chan struct{}
	runners           map[string]*Runner
	registrationToken string
	registrationGone  bool
	hook              func(w http.ResponseWriter, r *http.Request, body []byte) bool
	longPoll          time.Duration
	interval          string
	gitBytes          []int64
	acceptFinal       int
	repos             map[string]*Repo
}

// New starts a coordinator on 127.0.0.1; it stops when the test ends.
func New(t testing.TB) *Server { return NewAt(t, "") }

// NewAt starts a coordinator listening on addr (host:port; "" for a free
// port of 127.0.0.1): for clients that cannot reach the host's loopback,
// such as pods of a test cluster, give an address of a network the test
// made. It stops when the test ends.
func NewAt(t testing.TB, addr string) *Server {
	s := &Server{
		t: t, jobs: map[int64]*Job{}, nextID: 1000, changed: make(chan struct{}),
		runners: map[string]*Runner{}, registrationToken: "GR1348941reg-token", longPoll: 2 * time.Second,
		interval: "1", gitRoot: t.TempDir(), repos: map[string]*Repo{},
	}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	if addr != "" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("gitlabtest: listening on %s: %v", addr, err)
		}
		s.srv.Listener.Close()
		s.srv.Listener = ln
	}
	s.srv.Start()
	s.URL = s.srv.URL
	t.Cleanup(func() {
		s.mu.Lock()
		close(s.changed)
		s.changed = make(chan struct{})
		s.mu.Unlock()
		s.srv.CloseClientConnections()
		s.srv.Close()
	})
	return s
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// AddRunner registers a runner directly (as if created in GitLab's UI)
// and returns its glrt- token.
func (s *Server) AddRunner() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addRunnerLocked("glrt-"+randomHex(10), nil).Token
}

func (s *Server) addRunnerLocked(token string, params map[string]any) *Runner {
	r := &Runner{ID: int64(len(s.runners) + 1), Token: token, Params: params, Managers: map[string]bool{}}
	s.runners[token] = r
	return r
}

// RegistrationToken is the legacy registration token POST /runners takes.
func (s *Server) RegistrationToken() string { return s.registrationToken }

// DisableRegistrationTokens makes POST /runners answer 410, as GitLab does
// when registration tokens are turned off.
func (s *Server) DisableRegistrationTokens() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.registrationGone = true
}

// Runner returns a copy of the runner with token, or nil.
func (s *Server) Runner(token string) *Runner {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.runners[token]
	if !ok {
		return nil
	}
	c := *r
	c.Managers = map[string]bool{}
	for k, v := range r.Managers {
		c.Managers[k] = v
	}
	return &c
}

// SetHook installs a function that sees every request first; when it
// returns true it has answered and the coordinator does nothing more
// (the request is still recorded). nil removes it.
func (s *Server) SetHook(h func(w http.ResponseWriter, r *http.Request, body []byte) bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hook = h
}

// SetLongPoll sets how long a job request whose last_update is current is
// held (as Workhorse does) before the 204.
func (s *Server) SetLongPoll(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.longPoll = d
}

// SetUpdateInterval sets X-GitLab-Trace-Update-Interval (seconds).
func (s *Server) SetUpdateInterval(v string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.interval = v
}

// AcceptFinalWith202 makes the next n final state updates answer 202, as
// GitLab does while it still persists the trace.
func (s *Server) AcceptFinalWith202(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.acceptFinal = n
}

// AddJob queues a job and returns its ID.
func (s *Server) AddJob(spec JobSpec) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextID++
	j := &Job{ID: s.nextID, Token: "glcbt-" + randomHex(12), PipelineID: 500 + s.nextID, Spec: spec, Status: "pending"}
	s.jobs[j.ID] = j
	s.order = append(s.order, j.ID)
	if spec.Repo != "" && spec.SHA != "" {
		s.pipelineRef(spec.Repo, j.PipelineID, spec.SHA)
	}
	s.bumpLocked()
	return j.ID
}

// bumpLocked changes the queue value and wakes held job requests.
func (s *Server) bumpLocked() {
	s.queueValue++
	close(s.changed)
	s.changed = make(chan struct{})
}

// Job returns a copy of the job's record.
func (s *Server) Job(id int64) Job {
	s.mu.Lock()
	defer s.mu.Unlock()
	j, ok := s.jobs[id]
	if !ok {
		s.t.Fatalf("gitlabtest: no job %d", id)
	}
	c := *j
	c.Trace = bytes.Clone(j.Trace)
	c.Updates = slices.Clone(j.Updates)
	c.Artifacts = slices.Clone(j.Artifacts)
	if j.Final != nil {
		f := *j.Final
		c.Final = &f
	}
	return c
}

// Cancel cancels a job gracefully: it becomes canceling, and every later
// PATCH and PUT answer says so.
func (s *Server) Cancel(id int64) { s.setStatus(id, "canceling") }

// ForceCancel cancels a job at once: it becomes canceled, and every later
// PATCH and PUT is answered 403 with Job-Status: canceled.
func (s *Server) ForceCancel(id int64) { s.setStatus(id, "canceled") }

func (s *Server) setStatus(id int64, st string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.jobs[id].Status = st
}

// Requests returns every request so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

// WaitFinal waits (at most bound) until the job got its final state.
func (s *Server) WaitFinal(t testing.TB, id int64, bound time.Duration) Job {
	t.Helper()
	return s.WaitJob(t, id, bound, "its final state", func(j Job) bool { return j.Final != nil })
}

// WaitJob waits (at most bound) until cond holds for the job.
func (s *Server) WaitJob(t testing.TB, id int64, bound time.Duration, what string, cond func(Job) bool) Job {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		j := s.Job(id)
		if cond(j) {
			return j
		}
		if time.Now().After(deadline) {
			t.Fatalf("gitlabtest: job %d did not reach %s within %s; status %s, %d updates, trace:\n%s", id, what, bound, j.Status, len(j.Updates), j.Trace)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// statusRecorder keeps the status a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(p)
	r.bytes += int64(n)
	return n, err
}

func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	var body []byte
	if !isGit(r.URL.Path) && !strings.HasPrefix(r.Header.Get("Content-Type"), "multipart/") {
		body, _ = io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
	}
	rec := &statusRecorder{ResponseWriter: w}
	defer func() {
		s.mu.Lock()
		s.requests = append(s.requests, Request{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Header: r.Header.Clone(), Body: body, Status: rec.status})
		if isGit(r.URL.Path) {
			s.gitBytes = append(s.gitBytes, rec.bytes)
		}
		s.mu.Unlock()
	}()
	s.mu.Lock()
	hook := s.hook
	s.mu.Unlock()
	if hook != nil && hook(rec, r, body) {
		return
	}
	if isGit(r.URL.Path) {
		s.serveGit(rec, r)
		return
	}
	path := strings.TrimPrefix(r.URL.Path, "/api/v4/")
	if path == r.URL.Path {
		http.NotFound(rec, r)
		return
	}
	parts := strings.Split(path, "/")
	switch {
	case r.Method == http.MethodPost && path == "runners":
		s.register(rec, body)
	case r.Method == http.MethodPost && path == "runners/verify":
		s.verify(rec, body)
	case r.Method == http.MethodDelete && path == "runners":
		s.unregister(rec, body, false)
	case r.Method == http.MethodDelete && path == "runners/managers":
		s.unregister(rec, body, true)
	case r.Method == http.MethodPost && path == "jobs/request":
		s.request(rec, r, body)
	case len(parts) == 2 && parts[0] == "jobs" && r.Method == http.MethodPut:
		s.update(rec, r, parts[1], body)
	case len(parts) == 3 && parts[0] == "jobs" && parts[2] == "trace" && r.Method == http.MethodPatch:
		s.patch(rec, r, parts[1], body)
	case len(parts) == 3 && parts[0] == "jobs" && parts[2] == "artifacts" && r.Method == http.MethodPost:
		s.uploadArtifact(rec, r, parts[1])
	case len(parts) == 3 && parts[0] == "jobs" && parts[2] == "artifacts" && r.Method == http.MethodGet:
		s.downloadArtifact(rec, r, parts[1])
	default:
		message(rec, http.StatusNotFound, "404 Not Found")
	}
}

// message answers as Grape does: {"message": "..."}.
func message(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"message": msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (s *Server) register(w http.ResponseWriter, body []byte) {
	var p map[string]any
	if json.Unmarshal(body, &p) != nil {
		message(w, http.StatusBadRequest, "400 Bad request")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.registrationGone {
		message(w, http.StatusGone, "410 Gone")
		return
	}
	if p["token"] != s.registrationToken {
		message(w, http.StatusForbidden, "403 Forbidden")
		return
	}
	r := s.addRunnerLocked("t1_"+randomHex(10), p) // legacy tokens have no glrt- prefix
	writeJSON(w, http.StatusCreated, map[string]any{"id": r.ID, "token": r.Token, "token_expires_at": nil})
}

func (s *Server) verify(w http.ResponseWriter, body []byte) {
	var p struct {
		Token    string `json:"token"`
		SystemID string `json:"system_id"`
	}
	_ = json.Unmarshal(body, &p)
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.runners[p.Token]
	if !ok {
		message(w, http.StatusForbidden, "403 Forbidden")
		return
	}
	if p.SystemID != "" {
		r.Managers[p.SystemID] = true
	}
	writeJSON(w, http.StatusOK, map[string]any{"id": r.ID, "token": r.Token, "token_expires_at": nil})
}

func (s *Server) unregister(w http.ResponseWriter, body []byte, manager bool) {
	var p struct {
		Token    string `json:"token"`
		SystemID string `json:"system_id"`
	}
	_ = json.Unmarshal(body, &p)
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.runners[p.Token]
	if !ok {
		message(w, http.StatusForbidden, "403 Forbidden")
		return
	}
	if manager {
		if !r.Managers[p.SystemID] {
			message(w, http.StatusNotFound, "404 Runner manager not found")
			return
		}
		delete(r.Managers, p.SystemID)
	} else {
		delete(s.runners, p.Token)
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) request(w http.ResponseWriter, r *http.Request, body []byte) {
	var p struct {
		Token      string `json:"token"`
		LastUpdate string `json:"last_update"`
		SystemID   string `json:"system_id"`
	}
	_ = json.Unmarshal(body, &p)
	s.mu.Lock()
	runner, ok := s.runners[p.Token]
	if !ok {
		s.mu.Unlock()
		message(w, http.StatusForbidden, "403 Forbidden")
		return
	}
	if p.SystemID != "" {
		runner.Managers[p.SystemID] = true
	}
	if runner.Paused {
		v := s.queueValue
		s.mu.Unlock()
		w.Header().Set("X-GitLab-Last-Update", strconv.Itoa(v))
		w.WriteHeader(http.StatusNoContent)
		return
	}
	// Long polling (Workhorse): hold a request whose last_update is current
	// until the queue changes or the poll ends.
	if p.LastUpdate == strconv.Itoa(s.queueValue) {
		changed, poll := s.changed, s.longPoll
		s.mu.Unlock()
		t := time.NewTimer(poll)
		select {
		case <-changed:
		case <-t.C:
		case <-r.Context().Done():
		}
		t.Stop()
		s.mu.Lock()
		if p.LastUpdate == strconv.Itoa(s.queueValue) {
			v := s.queueValue
			s.mu.Unlock()
			w.Header().Set("X-GitLab-Last-Update", strconv.Itoa(v))
			w.WriteHeader(http.StatusNoContent)
			return
		}
	}
	for _, id := range s.order {
		j := s.jobs[id]
		if j.assigned || j.Status != "pending" {
			continue
		}
		j.assigned = true
		payload := j.Spec.Body
		ct := j.Spec.ContentType
		if payload == nil {
			payload = s.payloadLocked(j, runner)
		}
		if ct == "" {
			ct = "application/json"
		}
		j.Payload = payload
		j.PickedAt = time.Now()
		s.mu.Unlock()
		w.Header().Set("Content-Type", ct)
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write(payload)
		return
	}
	v := s.queueValue
	s.mu.Unlock()
	w.Header().Set("X-GitLab-Last-Update", strconv.Itoa(v))
	w.WriteHeader(http.StatusNoContent)
}

// payloadLocked builds the 201 body the way GitLab's
// API::Entities::Ci::JobRequest::Response exposes it.
func (s *Server) payloadLocked(j *Job, runner *Runner) []byte {
	sp := j.Spec
	timeout := sp.Timeout
	if timeout == 0 {
		timeout = 3600
	}
	stage := sp.Stage
	if stage == "" {
		stage = "test"
	}
	ref := sp.Ref
	if ref == "" {
		ref = "main"
	}
	project := sp.Repo
	if project == "" {
		project = "group/project"
	}
	host := strings.TrimPrefix(s.URL, "http://")
	repoURL := "http://gitlab-ci-token:" + j.Token + "@" + host + "/" + project + ".git"
	v := func(k, val string, public bool) map[string]any {
		return map[string]any{"key": k, "value": val, "public": public, "masked": false}
	}
	vars := []map[string]any{
		v("CI_PIPELINE_ID", strconv.FormatInt(j.PipelineID, 10), true),
		v("CI_JOB_ID", strconv.FormatInt(j.ID, 10), true),
		v("CI_JOB_URL", s.URL+"/"+project+"/-/jobs/"+strconv.FormatInt(j.ID, 10), true),
		{"key": "CI_JOB_TOKEN", "value": j.Token, "public": false, "masked": true},
		v("CI_JOB_NAME", sp.Name, true),
		v("CI_JOB_STAGE", stage, true),
		v("CI_SERVER_URL", s.URL, true),
		v("CI_SERVER_HOST", strings.Split(host, ":")[0], true),
		v("CI_API_V4_URL", s.URL+"/api/v4", true),
		v("CI_PROJECT_ID", "42", true),
		v("CI_PROJECT_PATH", project, true),
		v("CI_PROJECT_NAME", project[strings.LastIndex(project, "/")+1:], true),
		{"key": "CI_REPOSITORY_URL", "value": repoURL, "public": false, "masked": false},
		v("CI_COMMIT_SHA", sp.SHA, true),
		v("CI_COMMIT_REF_NAME", ref, true),
		v("CI_RUNNER_ID", strconv.FormatInt(runner.ID, 10), true),
		v("CI_RUNNER_DESCRIPTION", "test runner", true),
		v("GITLAB_CI", "true", true),
		v("CI", "true", true),
	}
	for _, x := range sp.Variables {
		vars = append(vars, map[string]any{"key": x.Key, "value": x.Value, "public": x.Public, "masked": x.Masked, "file": x.File, "raw": x.Raw})
	}
	steps := []map[string]any{{"name": "script", "script": nonNil(sp.Script), "timeout": timeout, "when": "on_success", "allow_failure": false}}
	if len(sp.AfterScript) > 0 {
		steps = append(steps, map[string]any{"name": "after_script", "script": sp.AfterScript, "timeout": timeout, "when": "always", "allow_failure": true})
	}
	arts := []map[string]any{}
	for _, a := range sp.Artifacts {
		typ, format, when := a.Type, a.Format, a.When
		if typ == "" {
			typ = "archive"
		}
		if format == "" {
			format = "zip"
		}
		if when == "" {
			when = "on_success"
		}
		arts = append(arts, map[string]any{"name": a.Name, "untracked": a.Untracked, "paths": nonNil(a.Paths), "exclude": nonNil(a.Exclude),
			"when": when, "artifact_type": typ, "artifact_format": format, "expire_in": a.ExpireIn})
	}
	caches := []map[string]any{}
	for _, c := range sp.Cache {
		caches = append(caches, map[string]any{"key": c.Key, "untracked": c.Untracked, "policy": c.Policy, "paths": nonNil(c.Paths), "when": c.When, "fallback_keys": nonNil(c.FallbackKeys)})
	}
	deps := []map[string]any{}
	for _, id := range sp.Dependencies {
		d := s.jobs[id]
		var file any
		for _, a := range d.Artifacts {
			if a.Type == "archive" {
				file = map[string]any{"filename": a.FileName, "size": len(a.Data)}
			}
		}
		deps = append(deps, map[string]any{"id": d.ID, "name": d.Spec.Name, "token": d.Token, "artifacts_file": file})
	}
	refspecs := []string{fmt.Sprintf("+refs/pipelines/%d:refs/pipelines/%d", j.PipelineID, j.PipelineID), "+refs/heads/" + ref + ":refs/remotes/origin/" + ref}
	p := map[string]any{
		"id": j.ID, "token": j.Token, "allow_git_fetch": sp.AllowGitFetch,
		"job_info": map[string]any{"name": sp.Name, "stage": stage, "project_id": 42, "project_name": project[strings.LastIndex(project, "/")+1:],
			"project_full_path": project, "pipeline_id": j.PipelineID, "time_in_queue_seconds": 0.5,
			"project_jobs_running_on_instance_runners_count": "+Inf", "queue_size": 0, "queue_depth": 0},
		"git_info": map[string]any{"repo_url": repoURL, "repo_object_format": "sha1", "ref": ref, "sha": sp.SHA, "before_sha": "0000000000000000000000000000000000000000",
			"ref_type": "branch", "refspecs": refspecs, "depth": sp.Depth, "protected": false},
		"runner_info":  map[string]any{"timeout": timeout, "runner_session_url": nil},
		"variables":    vars,
		"steps":        steps,
		"image":        nil,
		"services":     []any{},
		"artifacts":    arts,
		"cache":        caches,
		"credentials":  []any{},
		"dependencies": deps,
		"features": map[string]any{"trace_sections": true, "failure_reasons": []string{
			"unknown_failure", "script_failure", "api_failure", "stuck_or_timeout_failure", "runner_system_failure",
			"missing_dependency_failure", "runner_unsupported", "stale_schedule", "job_execution_timeout", "archived_failure",
			"unmet_prerequisites", "scheduler_failure", "data_integrity_failure", "job_canceled"}},
	}
	if sp.Edit != nil {
		sp.Edit(p)
	}
	b, err := json.Marshal(p)
	if err != nil {
		s.t.Errorf("gitlabtest: encoding the payload: %v", err)
	}
	return b
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// authJob finds the job of a job call and checks its token, as GitLab's
// authenticate_job! does: 403 for an unknown job or a wrong token, and 403
// with Job-Status when the job is no longer processing on the runner.
func (s *Server) authJob(w http.ResponseWriter, r *http.Request, idText string, bodyToken string) *Job {
	id, _ := strconv.ParseInt(idText, 10, 64)
	j, ok := s.jobs[id]
	token := r.Header.Get("Job-Token")
	if token == "" {
		token = bodyToken
	}
	if !ok || token != j.Token {
		message(w, http.StatusForbidden, "403 Forbidden")
		return nil
	}
	switch j.Status {
	case "running", "canceling":
		return j
	case "pending":
		if j.assigned {
			return j
		}
	}
	w.Header().Set("Job-Status", j.Status)
	message(w, http.StatusForbidden, "403 Forbidden - Job is not processing on runner")
	return nil
}

func (s *Server) update(w http.ResponseWriter, r *http.Request, idText string, body []byte) {
	var p struct {
		Token         string `json:"token"`
		State         string `json:"state"`
		FailureReason string `json:"failure_reason"`
		ExitCode      int    `json:"exit_code"`
		Checksum      string `json:"checksum"`
		Output        *struct {
			Checksum string `json:"checksum"`
			Bytesize int64  `json:"bytesize"`
		} `json:"output"`
	}
	if err := json.Unmarshal(body, &p); err != nil {
		message(w, http.StatusBadRequest, "400 Bad request - "+err.Error())
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	j := s.authJob(w, r, idText, p.Token)
	if j == nil {
		return
	}
	u := StateUpdate{State: p.State, FailureReason: p.FailureReason, ExitCode: p.ExitCode, Checksum: p.Checksum}
	if p.Output != nil {
		u.HasOutput, u.Checksum, u.Bytesize = true, p.Output.Checksum, p.Output.Bytesize
	}
	j.Updates = append(j.Updates, u)
	w.Header().Set("X-GitLab-Trace-Update-Interval", "")
	switch p.State {
	case "pending":
	case "running":
		if j.Status == "pending" {
			j.Status = "running"
		}
	case "success", "failed":
		if s.acceptFinal > 0 {
			s.acceptFinal--
			w.Header().Set("Job-Status", j.Status)
			w.Header().Set("X-GitLab-Trace-Update-Interval", "1")
			w.WriteHeader(http.StatusAccepted)
			return
		}
		switch {
		case j.Status == "canceling":
			j.Status = "canceled"
		default:
			j.Status = p.State
		}
		f := u
		j.Final = &f
		j.FinalAt = time.Now()
	default:
		message(w, http.StatusBadRequest, "400 Bad request - unknown state")
		return
	}
	w.Header().Set("Job-Status", j.Status)
	w.WriteHeader(http.StatusOK)
}

// patch appends to the trace as Ci::AppendBuildTraceService does: only the
// start of Content-Range counts; bytes land at that offset (truncating what
// was after it) when it is not beyond the current end; the answer is 416
// with the real size unless the trace now ends where this body ends.
func (s *Server) patch(w http.ResponseWriter, r *http.Request, idText string, body []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j := s.authJob(w, r, idText, "")
	if j == nil {
		return
	}
	cr := r.Header.Get("Content-Range")
	startText, _, ok := strings.Cut(cr, "-")
	start, err := strconv.ParseInt(startText, 10, 64)
	if !ok || err != nil || start < 0 {
		message(w, http.StatusBadRequest, "400 Bad request - missing or bad Content-Range")
		return
	}
	if start <= int64(len(j.Trace)) {
		j.Trace = append(j.Trace[:start], body...)
	}
	size := int64(len(j.Trace))
	w.Header().Set("Job-Status", j.Status)
	w.Header().Set("Range", fmt.Sprintf("0-%d", size))
	if size != start+int64(len(body)) {
		w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
		return
	}
	w.Header().Set("X-GitLab-Trace-Update-Interval", s.interval)
	w.WriteHeader(http.StatusAccepted)
}

func (s *Server) uploadArtifact(w http.ResponseWriter, r *http.Request, idText string) {
	s.mu.Lock()
	j := s.authJob(w, r, idText, "")
	s.mu.Unlock()
	if j == nil {
		return
	}
	mr, err := r.MultipartReader()
	if err != nil {
		message(w, http.StatusBadRequest, "400 Bad request - "+err.Error())
		return
	}
	var a *Artifact
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			message(w, http.StatusBadRequest, "400 Bad request - "+err.Error())
			return
		}
		if part.FormName() == "file" {
			data, err := io.ReadAll(part)
			if err != nil {
				message(w, http.StatusBadRequest, "400 Bad request - "+err.Error())
				return
			}
			q := r.URL.Query()
			a = &Artifact{FileName: part.FileName(), Type: q.Get("artifact_type"), Format: q.Get("artifact_format"), ExpireIn: q.Get("expire_in"), Data: data}
		}
	}
	if a == nil {
		message(w, http.StatusBadRequest, "400 Bad request - file is missing")
		return
	}
	if a.Type == "" {
		a.Type = "archive"
	}
	s.mu.Lock()
	j.Artifacts = append(j.Artifacts, *a)
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_, _ = io.WriteString(w, "201")
}

func (s *Server) downloadArtifact(w http.ResponseWriter, r *http.Request, idText string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	token := r.Header.Get("Job-Token")
	var caller *Job
	for _, j := range s.jobs {
		if j.Token == token && (j.Status == "running" || j.Status == "canceling" || j.assigned && j.Status == "pending") {
			caller = j
		}
	}
	if caller == nil {
		message(w, http.StatusForbidden, "403 Forbidden")
		return
	}
	id, _ := strconv.ParseInt(idText, 10, 64)
	j, ok := s.jobs[id]
	if !ok {
		message(w, http.StatusNotFound, "404 Not Found")
		return
	}
	for _, a := range j.Artifacts {
		if a.Type == "archive" {
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Content-Disposition", "attachment; filename="+a.FileName)
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write(a.Data)
			return
		}
	}
	message(w, http.StatusNotFound, "404 Not Found")
}
