// Package sources gets a job's repository with git on the host: a bare
// mirror per repository (so a repeated job fetches only new objects), and
// from it a work tree per project and concurrency slot, checked out at the
// job's sha, which the host then ships into the job's environment as a tar
// stream (the executor's Upload).
//
// GitLab's variables are honoured: GIT_STRATEGY (clone: a fresh work tree;
// fetch: the previous one updated and cleaned; none/empty: nothing),
// GIT_DEPTH, the job's refspecs, GIT_CHECKOUT, GIT_CLEAN_FLAGS and
// GIT_SUBMODULE_STRATEGY (none, normal, recursive).
//
// The job token never reaches git's command line, a URL git stores, or
// the log: the credentials of the repository URL become an Authorization
// header scoped to GitLab's host, handed to git in its environment.
package sources

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/berthci/berth/sdk/archive"
)

// Strategies of GIT_STRATEGY.
const (
	Clone = "clone"
	Fetch = "fetch"
	None  = "none"
	Empty = "empty"
)

// Request says what to check out.
type Request struct {
	// RepoURL is git_info.repo_url; its credentials are used, never stored.
	RepoURL string
	// Project names the work tree (the project's full path); Slot keeps
	// concurrent jobs of one project apart.
	Project string
	Slot    int
	SHA     string
	Ref     string
	RefType string // branch or tag
	// Refspecs to fetch (git_info.refspecs); when empty, the ref's.
	Refspecs []string
	// Depth of a shallow fetch; 0 fetches the whole history.
	Depth int
	// Strategy: Clone, Fetch, None or Empty.
	Strategy string
	// Submodules: "none" (or ""), "normal", "recursive".
	Submodules string
	// CleanFlags for git clean after checkout ("-ffdx" when empty;
	// "none" skips it).
	CleanFlags string
	// NoCheckout fetches without checking out (GIT_CHECKOUT=false).
	NoCheckout bool
	// ObjectFormat is "sha1" (or "") or "sha256".
	ObjectFormat string
}

// Fetcher keeps the mirrors and work trees under Dir.
type Fetcher struct {
	Dir string
	// Git is the git program ("git" when empty).
	Git string
	Log *slog.Logger
}

// Tree is a work tree checked out for a job. It is locked for the job
// until Release.
type Tree struct {
	// Dir is the work tree on the host ("" for GIT_STRATEGY none/empty).
	Dir         string
	tracked     map[string]bool
	listTracked func() (map[string]bool, error)
	trackedOnce sync.Once
	unlock      func()
	once        sync.Once
}

// Write writes the work tree (with its .git) as a tar stream.
func (t *Tree) Write(ctx context.Context, w io.Writer) error {
	if t.Dir == "" {
		return archive.Write(ctx, w, os.TempDir(), nil)
	}
	entries, err := os.ReadDir(t.Dir)
	if err != nil {
		return fmt.Errorf("reading the work tree: %w", err)
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return archive.Write(ctx, w, t.Dir, names)
}

// Tracked are the files git tracks at the checked-out commit
// (slash-separated, relative); nil when nothing was checked out or they
// cannot be listed.
func (t *Tree) Tracked() map[string]bool {
	t.trackedOnce.Do(func() {
		if t.listTracked == nil {
			return
		}
		tracked, err := t.listTracked()
		if err == nil {
			t.tracked = tracked
		}
	})
	return t.tracked
}

// Release unlocks the work tree; calling it again does nothing.
func (t *Tree) Release() {
	t.once.Do(func() {
		if t.unlock != nil {
			t.unlock()
		}
	})
}

// remote is a repository URL split into what git may see and the
// credentials it must not.
type remote struct {
	clean  string // no credentials
	scope  string // scheme://host[:port]/ for the header
	header string // "Authorization: Basic …", or ""
	secret string // the password, to mask in errors
}

func parseRemote(raw string) (remote, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return remote{}, fmt.Errorf("the repository URL is not valid: %w", stripCredentials(err, raw))
	}
	var r remote
	if u.User != nil {
		pass, _ := u.User.Password()
		r.secret = pass
		r.header = "Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(u.User.Username()+":"+pass))
		u.User = nil
	}
	r.clean = u.String()
	r.scope = u.Scheme + "://" + u.Host + "/"
	return r, nil
}

func stripCredentials(err error, raw string) error {
	return errors.New(strings.ReplaceAll(err.Error(), raw, "<repository URL>"))
}

// key is a readable, unique folder name for s.
func key(s string) string {
	sum := sha256.Sum256([]byte(s))
	clean := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
			return r
		}
		return '_'
	}, s)
	clean = strings.Trim(clean, "._")
	if len(clean) > 60 {
		clean = clean[len(clean)-60:]
	}
	return clean + "-" + hex.EncodeToString(sum[:6])
}

// Checkout gets the sources a job asks for and returns its work tree,
// locked for the job. Progress goes to log (the job's trace).
func (f *Fetcher) Checkout(ctx context.Context, req Request, log io.Writer) (*Tree, error) {
	switch req.Strategy {
	case None, Empty:
		fmt.Fprintf(log, "Skipping Git repository setup (GIT_STRATEGY=%s)\n", req.Strategy)
		return &Tree{}, nil
	case Clone, Fetch:
	case "":
		req.Strategy = Clone
	default:
		return nil, fmt.Errorf("GIT_STRATEGY %q: use clone, fetch, none or empty", req.Strategy)
	}
	switch req.Submodules {
	case "", "none", "normal", "recursive":
	default:
		return nil, fmt.Errorf("GIT_SUBMODULE_STRATEGY %q: use none, normal or recursive", req.Submodules)
	}
	if req.SHA == "" {
		return nil, errors.New("the job names no commit (git_info.sha is empty)")
	}
	rem, err := parseRemote(req.RepoURL)
	if err != nil {
		return nil, err
	}
	g := &git{bin: f.Git, rem: rem, log: f.Log}
	if g.bin == "" {
		g.bin = "git"
	}
	mirror := filepath.Join(f.Dir, "mirrors", key(rem.clean)+".git")
	if err := f.updateMirror(ctx, g, mirror, req, log); err != nil {
		return nil, err
	}
	tree := filepath.Join(f.Dir, "trees", key(fmt.Sprintf("%s-%d", req.Project, req.Slot)))
	unlock, err := lock(ctx, tree+".lock")
	if err != nil {
		return nil, fmt.Errorf("locking the work tree: %w", err)
	}
	t := &Tree{Dir: tree, unlock: unlock}
	if err := f.checkout(ctx, g, mirror, tree, req, log); err != nil {
		t.Release()
		return nil, err
	}
	if !req.NoCheckout {
		// Read from the mirror when asked: the work tree may be another
		// job's by then.
		t.listTracked = func() (map[string]bool, error) {
			out, err := g.output(context.Background(), mirror, "ls-tree", "-r", "-z", "--name-only", req.SHA)
			if err != nil {
				return nil, err
			}
			tracked := map[string]bool{}
			for _, p := range bytes.Split(out, []byte{0}) {
				if len(p) > 0 {
					tracked[string(p)] = true
				}
			}
			return tracked, nil
		}
	}
	return t, nil
}

// refspecs are the job's, or the ref's own.
func refspecs(req Request) []string {
	if len(req.Refspecs) > 0 {
		return req.Refspecs
	}
	if req.Ref == "" {
		return nil
	}
	if req.RefType == "tag" {
		return []string{"+refs/tags/" + req.Ref + ":refs/tags/" + req.Ref}
	}
	return []string{"+refs/heads/" + req.Ref + ":refs/remotes/origin/" + req.Ref}
}

// updateMirror fetches the job's refspecs into the repository's bare
// mirror: objects already there are not fetched again.
func (f *Fetcher) updateMirror(ctx context.Context, g *git, mirror string, req Request, log io.Writer) error {
	if err := os.MkdirAll(filepath.Dir(mirror), 0o700); err != nil {
		return fmt.Errorf("making the git mirror folder: %w", err)
	}
	unlock, err := lock(ctx, mirror+".lock")
	if err != nil {
		return fmt.Errorf("locking the git mirror: %w", err)
	}
	defer unlock()
	if _, err := os.Stat(filepath.Join(mirror, "HEAD")); err != nil {
		args := []string{"init", "-q", "--bare"}
		if req.ObjectFormat == "sha256" {
			args = append(args, "--object-format=sha256")
		}
		if err := g.run(ctx, "", append(args, mirror)...); err != nil {
			return err
		}
	}
	shallow := fileExists(filepath.Join(mirror, "shallow"))
	fresh := !fileExists(filepath.Join(mirror, fetchedMarker))
	if !fresh && !(req.Depth == 0 && shallow) && g.mirrorHas(ctx, mirror, req) {
		// Another job of the same pipeline fetched all of it already.
		fmt.Fprintf(log, "The host's mirror of the repository already holds %s and the job's refs\n", shortSHA(req.SHA))
		return nil
	}
	args := []string{"fetch", "--quiet", "--no-tags", "--no-write-fetch-head"}
	switch {
	case req.Depth > 0 && (fresh || shallow):
		args = append(args, fmt.Sprintf("--depth=%d", req.Depth))
	case req.Depth == 0 && shallow:
		args = append(args, "--unshallow")
	}
	args = append(args, g.rem.clean)
	args = append(args, refspecs(req)...)
	if err := g.run(ctx, mirror, args...); err != nil {
		return fmt.Errorf("fetching from the repository: %w", err)
	}
	if fresh {
		if err := os.WriteFile(filepath.Join(mirror, fetchedMarker), nil, 0o600); err != nil {
			return fmt.Errorf("marking the git mirror: %w", err)
		}
	}
	if g.run(ctx, mirror, "cat-file", "-e", req.SHA+"^{commit}") != nil {
		// Not under any refspec: ask for the commit itself.
		fetch := []string{"fetch", "--quiet", "--no-tags", "--no-write-fetch-head"}
		if req.Depth > 0 {
			fetch = append(fetch, fmt.Sprintf("--depth=%d", req.Depth))
		}
		if err := g.run(ctx, mirror, append(fetch, g.rem.clean, req.SHA)...); err != nil {
			return fmt.Errorf("commit %s is not in the repository (refspecs %s): %w", req.SHA, strings.Join(refspecs(req), " "), err)
		}
	}
	return nil
}

// checkout brings the project's work tree to req.SHA, from the mirror.
func (f *Fetcher) checkout(ctx context.Context, g *git, mirror, tree string, req Request, log io.Writer) error {
	if req.Strategy == Clone {
		if err := os.RemoveAll(tree); err != nil {
			return fmt.Errorf("removing the old work tree: %w", err)
		}
	}
	reused := fileExists(filepath.Join(tree, ".git", "HEAD"))
	if reused {
		fmt.Fprintln(log, "Reinitialized existing Git repository (the host's work tree of this project)")
	} else {
		if err := os.RemoveAll(tree); err != nil {
			return fmt.Errorf("removing a broken work tree: %w", err)
		}
		args := []string{"init", "-q"}
		if req.ObjectFormat == "sha256" {
			args = append(args, "--object-format=sha256")
		}
		if err := g.run(ctx, "", append(args, tree)...); err != nil {
			return err
		}
		fmt.Fprintln(log, "Created fresh repository.")
	}
	// origin is the repository, without credentials (scripts in the job
	// use CI_JOB_TOKEN).
	if err := g.run(ctx, tree, "config", "remote.origin.url", g.rem.clean); err != nil {
		return err
	}
	if req.Depth > 0 {
		fmt.Fprintf(log, "Fetching changes with git depth set to %d...\n", req.Depth)
	} else {
		fmt.Fprintln(log, "Fetching changes...")
	}
	depth := ""
	switch {
	case req.Depth > 0:
		depth = fmt.Sprintf("--depth=%d", req.Depth)
	case fileExists(filepath.Join(tree, ".git", "shallow")):
		depth = "--unshallow"
	}
	// The mirror holds each refspec's destination: fetch those, as they are.
	var specs []string
	for _, spec := range refspecs(req) {
		if _, dst, ok := strings.Cut(strings.TrimPrefix(spec, "+"), ":"); ok && dst != "" {
			specs = append(specs, "+"+dst+":"+dst)
		}
	}
	fetch := func(what ...string) error {
		args := []string{"fetch", "--quiet", "--no-tags", "--force"}
		if depth != "" {
			args = append(args, depth)
		}
		args = append(args, "file://"+mirror)
		return g.run(ctx, tree, append(args, what...)...)
	}
	if len(specs) > 0 {
		if err := fetch(specs...); err != nil {
			return fmt.Errorf("fetching from the mirror: %w", err)
		}
	}
	if req.NoCheckout {
		if g.run(ctx, tree, "cat-file", "-e", req.SHA+"^{commit}") != nil {
			if err := fetch(req.SHA); err != nil {
				return fmt.Errorf("fetching commit %s from the mirror: %w", req.SHA, err)
			}
		}
		fmt.Fprintln(log, "Skipping Git checkout (GIT_CHECKOUT=false)")
		return nil
	}
	fmt.Fprintf(log, "Checking out %s as detached HEAD (ref is %s)...\n", shortSHA(req.SHA), req.Ref)
	checkout := []string{"-c", "advice.detachedHead=false", "checkout", "-f", "-q", req.SHA}
	if err := g.run(ctx, tree, checkout...); err != nil {
		// The commit is under none of the refspecs: fetch it by itself.
		if ferr := fetch(req.SHA); ferr != nil {
			return fmt.Errorf("fetching commit %s from the mirror: %w", req.SHA, ferr)
		}
		if err := g.run(ctx, tree, checkout...); err != nil {
			return fmt.Errorf("checking out %s: %w", req.SHA, err)
		}
	}
	if flags := req.CleanFlags; flags != "none" && reused {
		if flags == "" {
			flags = "-ffdx"
		}
		if err := g.run(ctx, tree, append([]string{"clean"}, strings.Fields(flags)...)...); err != nil {
			return fmt.Errorf("git clean %s: %w", flags, err)
		}
	}
	return f.submodules(ctx, g, tree, req, log)
}

func shortSHA(sha string) string {
	if len(sha) > 8 {
		return sha[:8]
	}
	return sha
}

// mirrorHas says whether the mirror holds the job's commit and every
// destination of its refspecs (one git process).
func (g *git) mirrorHas(ctx context.Context, mirror string, req Request) bool {
	lines := []string{req.SHA + "^{commit}"}
	for _, spec := range refspecs(req) {
		if _, dst, ok := strings.Cut(strings.TrimPrefix(spec, "+"), ":"); ok && dst != "" {
			lines = append(lines, dst)
		}
	}
	cmd := g.command(ctx, mirror, "cat-file", "--batch-check")
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	out, err := cmd.Output()
	return err == nil && !bytes.Contains(out, []byte(" missing"))
}

func (f *Fetcher) submodules(ctx context.Context, g *git, tree string, req Request, log io.Writer) error {
	if req.Submodules == "" || req.Submodules == "none" {
		fmt.Fprintln(log, "Skipping Git submodules setup")
		return nil
	}
	if !fileExists(filepath.Join(tree, ".gitmodules")) {
		return nil
	}
	recursive := req.Submodules == "recursive"
	fmt.Fprintf(log, "Updating/initializing submodules%s...\n", map[bool]string{true: " recursively"}[recursive])
	sync := []string{"submodule", "sync"}
	update := []string{"-c", "protocol.file.allow=always", "submodule", "update", "--init"}
	clean := []string{"submodule", "foreach", "git clean -ffdx"}
	if recursive {
		sync = append(sync, "--recursive")
		update = append(update, "--recursive")
		clean = []string{"submodule", "foreach", "--recursive", "git clean -ffdx"}
	}
	if req.Depth > 0 {
		update = append(update, fmt.Sprintf("--depth=%d", req.Depth))
	}
	for _, args := range [][]string{sync, update, clean} {
		if err := g.run(ctx, tree, args...); err != nil {
			return fmt.Errorf("updating submodules: %w", err)
		}
	}
	return nil
}

// git runs git with the repository's credentials in its environment.
type git struct {
	bin string
	rem remote
	log *slog.Logger
}

// env is git's environment: the caller's, without variables that would
// make git print requests (and so the Authorization header), with the
// header scoped to the repository's host.
func (g *git) env() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "GIT_TRACE") || k == "GIT_CURL_VERBOSE" || strings.HasPrefix(k, "GIT_CONFIG_") ||
			k == "GIT_DIR" || k == "GIT_WORK_TREE" || k == "GIT_INDEX_FILE" {
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "GIT_TERMINAL_PROMPT=0", "LC_ALL=C", "GIT_ASKPASS=/bin/false")
	if g.rem.header != "" {
		env = append(env, "GIT_CONFIG_COUNT=1", "GIT_CONFIG_KEY_0=http."+g.rem.scope+".extraHeader", "GIT_CONFIG_VALUE_0="+g.rem.header)
	}
	return env
}

func (g *git) command(ctx context.Context, dir string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, g.bin, args...)
	cmd.Dir = dir
	cmd.Env = g.env()
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

func (g *git) run(ctx context.Context, dir string, args ...string) error {
	_, err := g.output(ctx, dir, args...)
	return err
}

func (g *git) output(ctx context.Context, dir string, args ...string) ([]byte, error) {
	cmd := g.command(ctx, dir, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	out, err := cmd.Output()
	if g.log != nil {
		g.log.Debug("git", "command", args[0], "took", time.Since(start))
	}
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if g.rem.secret != "" {
			msg = strings.ReplaceAll(msg, g.rem.secret, "[MASKED]")
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("git %s: %w", args[0], ctx.Err())
		}
		return nil, fmt.Errorf("git %s: %w: %s", args[0], err, msg)
	}
	return out, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// fetchedMarker is made in a mirror after its first fetch.
const fetchedMarker = "berth-fetched"

func sleepChan() <-chan time.Time { return time.After(50 * time.Millisecond) }

// lock takes an exclusive flock on path (made if missing), waiting for it;
// it works between processes and between goroutines (each opens its own
// file).
func lock(ctx context.Context, path string) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, err
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-sleepChan():
		}
	}
}
