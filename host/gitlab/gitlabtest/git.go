package gitlabtest

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// GitHTTPBackend is Debian's git smart-HTTP CGI program.
const GitHTTPBackend = "/usr/lib/git-core/git-http-backend"

// Repo is a bare repository the coordinator serves at URL/<Path>.git, and a
// work tree the test commits in.
type Repo struct {
	Path string // "group/project"
	Bare string
	Work string
	t    testing.TB
}

func isGit(p string) bool { return strings.Contains(p, ".git/") }

// gitEnv makes git in tests independent of the machine's configuration.
func gitEnv() []string {
	return append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "HOME=/nonexistent", "GIT_CONFIG_GLOBAL=/dev/null",
		"GIT_AUTHOR_NAME=Test", "GIT_AUTHOR_EMAIL=test@example.com", "GIT_COMMITTER_NAME=Test", "GIT_COMMITTER_EMAIL=test@example.com",
		"GIT_TERMINAL_PROMPT=0")
}

// Git runs git in dir and returns its trimmed output; a failure fails t.
func Git(t testing.TB, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = gitEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %s in %s: %v\n%s", strings.Join(args, " "), dir, err, out)
	}
	return strings.TrimSpace(string(out))
}

// CreateRepo makes a bare repository served at URL/<path>.git, with a
// first commit of files on branch main; a second call returns the same one.
func (s *Server) CreateRepo(path string, files map[string]string) *Repo {
	t := s.t
	t.Helper()
	s.mu.Lock()
	r, ok := s.repos[path]
	s.mu.Unlock()
	if ok {
		return r
	}
	if _, err := os.Stat(GitHTTPBackend); err != nil {
		t.Fatalf("gitlabtest: %s is missing (install Debian's git): %v", GitHTTPBackend, err)
	}
	r = &Repo{Path: path, Bare: filepath.Join(s.gitRoot, path+".git"), Work: t.TempDir(), t: t}
	if err := os.MkdirAll(r.Bare, 0o755); err != nil {
		t.Fatal(err)
	}
	Git(t, r.Bare, "init", "-q", "--bare", "-b", "main")
	Git(t, r.Bare, "config", "http.receivepack", "false")
	Git(t, r.Work, "init", "-q", "-b", "main")
	Git(t, r.Work, "remote", "add", "origin", r.Bare)
	r.Commit(files, "first commit")
	s.mu.Lock()
	s.repos[path] = r
	s.mu.Unlock()
	return r
}

// Commit writes files (path → content) into the work tree, commits them
// on main, pushes to the bare repository and returns the commit's sha.
func (r *Repo) Commit(files map[string]string, msg string) string {
	r.t.Helper()
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		p := filepath.Join(r.Work, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			r.t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(files[name]), 0o644); err != nil {
			r.t.Fatal(err)
		}
	}
	Git(r.t, r.Work, "add", "-A")
	Git(r.t, r.Work, "commit", "-q", "--allow-empty", "-m", msg)
	Git(r.t, r.Work, "push", "-q", "origin", "main")
	return Git(r.t, r.Work, "rev-parse", "HEAD")
}

// pipelineRef makes refs/pipelines/<id> point at sha, as GitLab does for
// every pipeline (the first of the refspecs a job gets).
func (s *Server) pipelineRef(path string, pipeline int64, sha string) {
	bare := filepath.Join(s.gitRoot, path+".git")
	if _, err := os.Stat(bare); err != nil {
		return
	}
	cmd := exec.Command("git", "update-ref", fmt.Sprintf("refs/pipelines/%d", pipeline), sha)
	cmd.Dir = bare
	cmd.Env = gitEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		s.t.Errorf("gitlabtest: making the pipeline ref: %v\n%s", err, out)
	}
}

// GitResponseBytes returns the size of every answer to a git request so
// far, in order.
func (s *Server) GitResponseBytes() []int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.gitBytes)
}

// serveGit serves a repository through git http-backend, for the
// gitlab-ci-token user with the token of a job that is running, as GitLab
// does.
func (s *Server) serveGit(w http.ResponseWriter, r *http.Request) {
	user, pass, ok := basicAuth(r)
	s.mu.Lock()
	allowed := false
	if ok && user == "gitlab-ci-token" {
		for _, j := range s.jobs {
			if j.Token == pass && (j.Status == "running" || j.Status == "canceling" || j.assigned && j.Status == "pending") {
				allowed = true
			}
		}
	}
	s.mu.Unlock()
	if !allowed {
		w.Header().Set("WWW-Authenticate", `Basic realm="GitLab"`)
		http.Error(w, "HTTP Basic: Access denied", http.StatusUnauthorized)
		return
	}
	h := &cgi.Handler{
		Path: GitHTTPBackend,
		Env:  []string{"GIT_PROJECT_ROOT=" + s.gitRoot, "GIT_HTTP_EXPORT_ALL=1", "GIT_CONFIG_NOSYSTEM=1", "HOME=/nonexistent"},
	}
	h.ServeHTTP(w, r)
}

func basicAuth(r *http.Request) (string, string, bool) {
	if u, p, ok := r.BasicAuth(); ok {
		return u, p, true
	}
	v := r.Header.Get("Authorization")
	if b, ok := strings.CutPrefix(v, "Basic "); ok {
		raw, err := base64.StdEncoding.DecodeString(b)
		if err == nil {
			u, p, ok := strings.Cut(string(raw), ":")
			return u, p, ok
		}
	}
	return "", "", false
}
