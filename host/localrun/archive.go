package localrun

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/berthci/berth/host/glob"
)

// matcher decides which entries of a downloaded tree are kept.
type matcher func(name string, isDir bool) bool

// pathMatcher keeps what artifacts: or cache: asks for: entries matching
// one of paths (or inside a folder that does), files git does not track
// when untracked is set, minus entries matching exclude (or inside a
// folder that does). Everything under .git is left out.
func pathMatcher(paths, exclude []string, untracked bool, tracked map[string]bool) matcher {
	within := func(pattern, name string) bool {
		for p := name; p != "." && p != ""; p = path.Dir(p) {
			if glob.Match(pattern, p) {
				return true
			}
		}
		return false
	}
	return func(name string, isDir bool) bool {
		if name == ".git" || strings.HasPrefix(name, ".git/") {
			return false
		}
		keep := false
		for _, p := range paths {
			if within(p, name) {
				keep = true
				break
			}
		}
		if !keep && untracked && !isDir && !tracked[name] {
			keep = true
		}
		if !keep {
			return false
		}
		for _, e := range exclude {
			if within(e, name) {
				return false
			}
		}
		return true
	}
}

// roots returns the folders to download so that everything paths may
// match is in them.
func roots(paths []string, untracked bool) []string {
	if untracked {
		return []string{"."}
	}
	var out []string
	for _, p := range paths {
		out = append(out, glob.Base(p))
	}
	return out
}

// filterTar copies the entries of the tar stream r that keep accepts to a
// new tar stream on w, and returns how many files it kept.
func filterTar(r io.Reader, w io.Writer, keep matcher) (int, error) {
	tr := tar.NewReader(r)
	tw := tar.NewWriter(w)
	files := 0
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return files, fmt.Errorf("reading the downloaded files: %w", err)
		}
		name := strings.TrimSuffix(path.Clean(strings.TrimPrefix(hdr.Name, "./")), "/")
		if !keep(name, hdr.Typeflag == tar.TypeDir) {
			continue
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return files, fmt.Errorf("storing %s: %w", name, err)
		}
		if hdr.Typeflag == tar.TypeReg {
			if _, err := io.Copy(tw, tr); err != nil {
				return files, fmt.Errorf("storing %s: %w", name, err)
			}
			files++
		}
	}
	if err := tw.Close(); err != nil {
		return files, fmt.Errorf("finishing the archive: %w", err)
	}
	return files, nil
}

// emptyTar writes a tar stream without entries.
func emptyTar(w io.Writer) error { return tar.NewWriter(w).Close() }

// readFiles returns the regular files of a tar stream, by name.
func readFiles(r io.Reader, limit int64) (map[string][]byte, error) {
	tr := tar.NewReader(r)
	out := map[string][]byte{}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		if hdr.Size > limit {
			return out, fmt.Errorf("%s is larger than %d bytes", hdr.Name, limit)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			return out, err
		}
		out[path.Clean(hdr.Name)] = data
	}
}
