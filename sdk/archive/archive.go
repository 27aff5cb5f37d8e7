// Package archive moves directory trees in and out of a job's environment
// as tar streams: Extract unpacks an Upload, Write produces a Download.
//
// Both refuse to step outside the directory they work in. Symbolic links
// are stored and restored as links and never followed: an entry whose path
// goes through a symbolic link or climbs out with ".." is an error that
// names the entry. Only the permission bits of a mode (0777) are kept;
// owners, setuid, setgid and sticky bits are not.
package archive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// checkParents makes sure no directory on the way to name (below root) is
// a symbolic link. With create, missing directories are made; otherwise a
// missing one is reported as fs.ErrNotExist.
func checkParents(root *os.Root, name string, create bool) error {
	dir := path.Dir(name)
	if dir == "." {
		return nil
	}
	parts := strings.Split(dir, "/")
	for i := range parts {
		p := strings.Join(parts[:i+1], "/")
		fi, err := root.Lstat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist) && create:
			if err := root.Mkdir(p, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("creating directory %q: %w", p, err)
			}
			continue
		case err != nil:
			return err
		case fi.Mode()&fs.ModeSymlink != 0:
			return fmt.Errorf("it goes through the symbolic link %q", p)
		case !fi.IsDir():
			return fmt.Errorf("%q is not a directory: %w", p, syscall.ENOTDIR)
		}
	}
	return nil
}

// ctxReader stops a copy when its context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// sortedUnique returns the paths sorted with duplicates removed.
func sortedUnique(paths []string) []string {
	out := slices.Clone(paths)
	slices.Sort(out)
	return slices.Compact(out)
}

// Join returns root joined with rel, a path relative to root, after making
// sure that rel is not absolute, does not climb out of root with "..", and
// goes through no symbolic link that exists now. Executors use it for the
// dir argument of Upload before calling Extract.
func Join(root, rel string) (string, error) {
	name, err := CleanRelative(filepath.ToSlash(rel))
	if err != nil {
		return "", fmt.Errorf("path %q: %w", rel, err)
	}
	r, err := os.OpenRoot(root)
	if err != nil {
		return "", fmt.Errorf("opening %q: %w", root, err)
	}
	defer r.Close()
	// Check name itself too, not only its parents: a link at name would
	// be followed by Extract's creation of the directory.
	err = checkParents(r, name+"/x", false)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("path %q: %w", rel, err)
	}
	return filepath.Join(root, filepath.FromSlash(name)), nil
}
