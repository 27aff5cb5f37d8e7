package sshexec

import (
	"context"
	"fmt"
	"strings"
)

// remoteDir turns a directory as settings give it into one for the remote
// shell: "~/x" is x in the login directory, where relative paths start.
func remoteDir(dir string) string {
	if dir == "~" {
		return "."
	}
	return strings.TrimRight(strings.TrimPrefix(dir, "~/"), "/")
}

// MakeWorkspace creates a job's build directory dir and its sibling
// dir.tmp (mode 0700) on the remote host, and returns dir as an absolute
// path. A relative dir (or one starting with "~/") is in the login
// directory. Making a workspace that exists is fine.
func (c *Client) MakeWorkspace(ctx context.Context, dir string) (string, error) {
	if d := remoteDir(dir); d == "" || d == "." {
		return "", fmt.Errorf("workspace on %s: %q cannot be a build directory", c, dir)
	}
	dir = remoteDir(dir)
	out, err := c.Output(ctx, `mkdir -p -- "$1" "$1.tmp" && chmod 700 -- "$1.tmp" && cd -- "$1" && pwd`, dir)
	if err != nil {
		return "", fmt.Errorf("creating the build directory %s: %w", dir, err)
	}
	abs := strings.TrimSuffix(string(out), "\n")
	if !strings.HasPrefix(abs, "/") || strings.Contains(abs, "\n") {
		return "", fmt.Errorf("creating the build directory %s on %s: pwd printed %q, not an absolute path", dir, c, out)
	}
	return abs, nil
}

// removeScript kills every stage whose marker file is in $1.tmp (stages a
// crashed plugin left running; a stage that ended normally removed its
// own), then removes $1 and $1.tmp, also when scripts made parts of them
// read-only.
const removeScript = reapFunc + `d=$1 t=$1.tmp
for m in "$t"/stage-*.pgid; do
  [ -f "$m" ] || continue
  g=${m##*/stage-}; g=${g%.pgid}
  case $g in ''|*[!0-9]*) continue ;; esac
  reap "$g" 0 "$t" || exit 1
done
for x in "$d" "$t"; do
  [ -e "$x" ] || [ -L "$x" ] || continue
  rm -rf -- "$x" 2>/dev/null && continue
  chmod -R u+rwx -- "$x" 2>/dev/null
  rm -rf -- "$x" || exit 1
done
`

// RemoveWorkspace kills the stages still running in the workspace dir
// (found by their marker files in dir.tmp), then removes dir and dir.tmp.
// Removing a workspace that is not there is fine.
func (c *Client) RemoveWorkspace(ctx context.Context, dir string) error {
	dir = remoteDir(dir)
	if dir == "" || dir == "." || dir == ".." {
		return fmt.Errorf("workspace on %s: refusing to remove %q", c, dir)
	}
	if _, err := c.Output(ctx, removeScript, dir); err != nil {
		return fmt.Errorf("removing the build directory %s: %w", dir, err)
	}
	return nil
}
