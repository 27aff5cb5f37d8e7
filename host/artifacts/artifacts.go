// Package artifacts turns what a job left in its build directory (a tar
// stream from the executor's Download) into the archives GitLab takes —
// zip for the artifacts archive, gzip for reports such as JUnit, a raw file
// — keeping only the selected paths (artifacts:paths, exclude, untracked,
// and the same for caches), and turns a downloaded zip back into a tar
// stream for the executor's Upload.
package artifacts

import (
	"archive/tar"
	"archive/zip"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
	"time"

	"github.com/berthci/berth/host/glob"
)

// Selection says which files of the build directory are taken.
type Selection struct {
	// Paths are GitLab glob patterns ("out/*", "**/*.xml", "dist"); a
	// matching directory brings everything below it.
	Paths []string
	// Exclude patterns take files (or directories, with what is below)
	// out again.
	Exclude []string
	// Untracked takes every file git does not track (see Tracked).
	Untracked bool
	// Tracked are the files git tracks; nil means none (no checkout).
	Tracked map[string]bool
}

// Empty says whether the selection can take nothing.
func (s Selection) Empty() bool { return len(s.Paths) == 0 && !s.Untracked }

func hasMeta(seg string) bool { return strings.ContainsAny(seg, `*?[{\`) }

// Roots are the paths to download from the build directory to cover the
// selection: the literal leading part of each pattern, or the whole
// directory (".").
func (s Selection) Roots() []string {
	if s.Untracked {
		return []string{"."}
	}
	var roots []string
	for _, p := range s.Paths {
		p = strings.TrimPrefix(path.Clean(strings.TrimPrefix(p, "./")), "/")
		var lit []string
		for _, seg := range strings.Split(p, "/") {
			if hasMeta(seg) {
				break
			}
			lit = append(lit, seg)
		}
		if len(lit) == 0 {
			return []string{"."}
		}
		roots = append(roots, strings.Join(lit, "/"))
	}
	return roots
}

// ancestors returns name and each of its parent directories.
func ancestors(name string) []string {
	out := []string{name}
	for d := path.Dir(name); d != "." && d != "/"; d = path.Dir(d) {
		out = append(out, d)
	}
	return out
}

func matchAny(patterns []string, name string) bool {
	for _, a := range ancestors(name) {
		for _, p := range patterns {
			if glob.Match(p, a) {
				return true
			}
		}
	}
	return false
}

// Match says whether the file (slash-separated, relative) is taken.
func (s Selection) Match(name string) bool {
	name = strings.TrimSuffix(path.Clean(name), "/")
	if name == "." || name == "" {
		return false
	}
	in := matchAny(s.Paths, name)
	if !in && s.Untracked && name != ".git" && !strings.HasPrefix(name, ".git/") && !s.Tracked[name] {
		in = true
	}
	return in && !matchAny(s.Exclude, name)
}

// entries reads a tar stream and calls fn for each selected entry.
func entries(ctx context.Context, r io.Reader, sel Selection, fn func(h *tar.Header, body io.Reader) error) (int, error) {
	tr := tar.NewReader(r)
	n := 0
	for {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		h, err := tr.Next()
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, fmt.Errorf("reading the files of the job: %w", err)
		}
		name := strings.TrimSuffix(h.Name, "/")
		if !sel.Match(name) {
			continue
		}
		switch h.Typeflag {
		case tar.TypeReg, tar.TypeDir, tar.TypeSymlink:
		default:
			continue
		}
		if h.Typeflag != tar.TypeDir {
			n++
		}
		if err := fn(h, tr); err != nil {
			return n, err
		}
	}
}

// TarToZip writes the selected files of a tar stream as a zip archive and
// returns how many files (not directories) it holds.
func TarToZip(ctx context.Context, r io.Reader, w io.Writer, sel Selection) (int, error) {
	zw := zip.NewWriter(w)
	n, err := entries(ctx, r, sel, func(h *tar.Header, body io.Reader) error {
		fh := &zip.FileHeader{Name: h.Name, Modified: h.ModTime, Method: zip.Deflate}
		mode := fs.FileMode(h.Mode).Perm()
		switch h.Typeflag {
		case tar.TypeDir:
			fh.Name = strings.TrimSuffix(h.Name, "/") + "/"
			fh.Method = zip.Store
			mode |= fs.ModeDir
		case tar.TypeSymlink:
			mode |= fs.ModeSymlink
			fh.Method = zip.Store
		}
		fh.SetMode(mode)
		fw, err := zw.CreateHeader(fh)
		if err != nil {
			return fmt.Errorf("zipping %s: %w", h.Name, err)
		}
		switch h.Typeflag {
		case tar.TypeSymlink:
			_, err = io.WriteString(fw, h.Linkname)
		case tar.TypeReg:
			_, err = io.Copy(fw, body)
		}
		if err != nil {
			return fmt.Errorf("zipping %s: %w", h.Name, err)
		}
		return nil
	})
	if err != nil {
		return n, err
	}
	if err := zw.Close(); err != nil {
		return n, fmt.Errorf("finishing the zip archive: %w", err)
	}
	return n, nil
}

// TarToGzip writes the selected regular files of a tar stream as a gzip
// stream of one member per file (each named after its file), the format
// GitLab takes for reports, and returns how many files it holds.
func TarToGzip(ctx context.Context, r io.Reader, w io.Writer, sel Selection) (int, error) {
	return entries(ctx, r, sel, func(h *tar.Header, body io.Reader) error {
		if h.Typeflag != tar.TypeReg {
			return nil
		}
		gw := gzip.NewWriter(w)
		gw.Name = h.Name
		gw.ModTime = h.ModTime
		if _, err := io.Copy(gw, body); err != nil {
			return fmt.Errorf("compressing %s: %w", h.Name, err)
		}
		if err := gw.Close(); err != nil {
			return fmt.Errorf("compressing %s: %w", h.Name, err)
		}
		return nil
	})
}

// ErrMoreThanOne is returned by TarToRaw when the selection holds several
// files: a raw artifact is exactly one.
var ErrMoreThanOne = errors.New("a raw artifact must be exactly one file")

// TarToRaw writes the one selected regular file of a tar stream as it is.
func TarToRaw(ctx context.Context, r io.Reader, w io.Writer, sel Selection) (int, error) {
	files := 0
	n, err := entries(ctx, r, sel, func(h *tar.Header, body io.Reader) error {
		if h.Typeflag != tar.TypeReg {
			return nil
		}
		files++
		if files > 1 {
			return fmt.Errorf("%w (also %s)", ErrMoreThanOne, h.Name)
		}
		_, err := io.Copy(w, body)
		return err
	})
	_ = n
	return files, err
}

// FilterTar copies the selected entries of a tar stream to a new one.
func FilterTar(ctx context.Context, r io.Reader, w io.Writer, sel Selection) (int, error) {
	tw := tar.NewWriter(w)
	n, err := entries(ctx, r, sel, func(h *tar.Header, body io.Reader) error {
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := io.Copy(tw, body); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return n, err
	}
	return n, tw.Close()
}

// ZipToTar writes a zip archive's entries as a tar stream (files,
// directories, symbolic links). Names that are absolute or climb out with
// ".." are an error naming the entry.
func ZipToTar(ctx context.Context, zr *zip.Reader, w io.Writer) error {
	tw := tar.NewWriter(w)
	for _, f := range zr.File {
		if err := ctx.Err(); err != nil {
			return err
		}
		name := strings.ReplaceAll(f.Name, `\`, "/")
		clean := path.Clean(name)
		if strings.HasPrefix(name, "/") || clean == ".." || strings.HasPrefix(clean, "../") {
			return fmt.Errorf("archive entry %q lies outside the build directory", f.Name)
		}
		if clean == "." {
			continue
		}
		mode := f.Mode()
		h := &tar.Header{Name: clean, Mode: int64(mode.Perm()), ModTime: f.Modified.Truncate(time.Second)}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		switch {
		case mode.IsDir() || strings.HasSuffix(name, "/"):
			h.Typeflag, h.Name = tar.TypeDir, clean+"/"
			if mode.Perm() == 0 {
				h.Mode = 0o755
			}
			if err := tw.WriteHeader(h); err != nil {
				return err
			}
		case mode&fs.ModeSymlink != 0:
			rc, err := f.Open()
			if err != nil {
				return fmt.Errorf("archive entry %q: %w", f.Name, err)
			}
			target, err := io.ReadAll(io.LimitReader(rc, 4096))
			rc.Close()
			if err != nil {
				return fmt.Errorf("archive entry %q: %w", f.Name, err)
			}
			h.Typeflag, h.Linkname = tar.TypeSymlink, string(target)
			if err := tw.WriteHeader(h); err != nil {
				return err
			}
		case mode.IsRegular():
			h.Typeflag, h.Size = tar.TypeReg, int64(f.UncompressedSize64)
			rc, err := f.Open()
			if err != nil {
				return fmt.Errorf("archive entry %q: %w", f.Name, err)
			}
			if err := tw.WriteHeader(h); err != nil {
				rc.Close()
				return err
			}
			_, err = io.Copy(tw, rc)
			rc.Close()
			if err != nil {
				return fmt.Errorf("archive entry %q: %w", f.Name, err)
			}
		}
	}
	return tw.Close()
}
