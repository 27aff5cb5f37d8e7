package localrun

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// Git is what a local run knows of the project's git repository.
type Git struct {
	// Dir is the project folder; TopLevel the repository's root.
	Dir, TopLevel string
	SHA           string
	// Branch is empty on a detached HEAD; Tag is set when HEAD is exactly
	// at a tag.
	Branch, Tag   string
	Title         string
	Message       string
	Author        string
	Timestamp     time.Time
	DefaultBranch string
	// ProjectPath is namespace/name from the origin remote, if any.
	ProjectPath string
}

// ReadGit reads the repository dir is in. It returns an error wrapping
// ErrNoGit when dir is not in a repository (or git is not installed).
func ReadGit(ctx context.Context, dir string) (*Git, error) {
	top, err := git(ctx, dir, "rev-parse", "--show-toplevel")
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoGit, err)
	}
	g := &Git{Dir: dir, TopLevel: top}
	if g.SHA, err = git(ctx, dir, "rev-parse", "--verify", "-q", "HEAD"); err != nil {
		return nil, fmt.Errorf("%w: the repository has no commit yet", ErrNoGit)
	}
	g.Branch, _ = git(ctx, dir, "symbolic-ref", "-q", "--short", "HEAD")
	g.Tag, _ = git(ctx, dir, "describe", "--tags", "--exact-match", "HEAD")
	if log, err := git(ctx, dir, "log", "-1", "--format=%an <%ae>%x00%cI%x00%B"); err == nil {
		parts := strings.SplitN(log, "\x00", 3)
		if len(parts) == 3 {
			g.Author = parts[0]
			g.Timestamp, _ = time.Parse(time.RFC3339, parts[1])
			g.Message = parts[2]
			g.Title, _, _ = strings.Cut(parts[2], "\n")
		}
	}
	if ref, err := git(ctx, dir, "symbolic-ref", "-q", "--short", "refs/remotes/origin/HEAD"); err == nil {
		g.DefaultBranch = strings.TrimPrefix(ref, "origin/")
	}
	if g.DefaultBranch == "" {
		for _, b := range []string{"main", "master"} {
			if _, err := git(ctx, dir, "rev-parse", "--verify", "-q", "refs/heads/"+b); err == nil {
				g.DefaultBranch = b
				break
			}
		}
	}
	if g.DefaultBranch == "" {
		g.DefaultBranch = g.Branch
	}
	if url, err := git(ctx, dir, "remote", "get-url", "origin"); err == nil {
		g.ProjectPath = projectPath(url)
	}
	return g, nil
}

// ErrNoGit is wrapped by ReadGit's error when there is no repository.
var ErrNoGit = errors.New("not a git repository")

var remotePath = regexp.MustCompile(`^(?:[a-z+]+://[^/]+/|[^@/]+@[^:]+:)(.+?)(?:\.git)?/?$`)

// projectPath returns namespace/name from a remote URL.
func projectPath(url string) string {
	if m := remotePath.FindStringSubmatch(url); m != nil {
		return m[1]
	}
	return ""
}

func git(ctx context.Context, dir string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", append([]string{"-C", dir}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(errb.String())
		if msg == "" {
			msg = err.Error()
		}
		return "", fmt.Errorf("git %s: %s", strings.Join(args, " "), msg)
	}
	return strings.TrimRight(out.String(), "\n"), nil
}

// gitFiles runs git ls-files with args in dir and returns the paths
// (relative to dir).
func gitFiles(ctx context.Context, dir string, args ...string) ([]string, error) {
	out, err := git(ctx, dir, append([]string{"ls-files", "-z"}, args...)...)
	if err != nil {
		return nil, err
	}
	var files []string
	for _, f := range strings.Split(out, "\x00") {
		if f != "" {
			files = append(files, f)
		}
	}
	return files, nil
}

// Sources returns the files that make the working tree: tracked ones (as
// they are now, changes included) and untracked ones that are not
// ignored, relative to the project folder; plus .git when the project
// folder is the repository's root.
func (g *Git) Sources(ctx context.Context) ([]string, error) {
	files, err := gitFiles(ctx, g.Dir, "--cached", "--others", "--exclude-standard")
	if err != nil {
		return nil, fmt.Errorf("listing the files of the working tree: %w", err)
	}
	if same(g.Dir, g.TopLevel) {
		files = append(files, ".git")
	}
	return files, nil
}

// Tracked returns the files git tracks, relative to the project folder.
func (g *Git) Tracked(ctx context.Context) ([]string, error) {
	return gitFiles(ctx, g.Dir, "--cached")
}

// Changed returns the files that differ between the working tree and
// compareTo (HEAD when empty), untracked files included, relative to the
// project folder.
func (g *Git) Changed(ctx context.Context, compareTo string) ([]string, error) {
	if compareTo == "" {
		compareTo = "HEAD"
	}
	out, err := git(ctx, g.Dir, "diff", "--name-only", "-z", "--relative", compareTo, "--")
	if err != nil {
		return nil, fmt.Errorf("comparing the working tree with %s: %w", compareTo, err)
	}
	var files []string
	for _, f := range strings.Split(out, "\x00") {
		if f != "" {
			files = append(files, f)
		}
	}
	untracked, err := gitFiles(ctx, g.Dir, "--others", "--exclude-standard")
	if err != nil {
		return nil, err
	}
	return append(files, untracked...), nil
}

func same(a, b string) bool {
	ra, err1 := filepath.EvalSymlinks(a)
	rb, err2 := filepath.EvalSymlinks(b)
	return err1 == nil && err2 == nil && ra == rb
}
