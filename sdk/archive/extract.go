package archive

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path"
	"slices"
	"strconv"
	"time"
)

// Extract unpacks the tar stream r into dir, creating dir if it is missing.
//
// Regular files, directories, symbolic links and hard links are restored
// with their permission bits and modification times. A regular file is
// written under a temporary name and renamed into place, so no
// half-written file is ever visible under its real name; a symbolic link
// is made the same way. A link's target text is stored as it is, whatever
// it points at, but Extract never follows a link: an entry whose path goes
// through one, climbs out of dir with "..", or is absolute is an error
// naming the entry. A hard link must point at a regular file extracted
// inside dir. Devices, FIFOs and other special entries are refused.
// Directory modes are applied at the end, so a read-only directory can
// still receive its files.
func Extract(ctx context.Context, r io.Reader, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating the directory to extract into: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("opening the directory to extract into: %w", err)
	}
	defer root.Close()

	x := extractor{ctx: ctx, root: root, dirs: map[string]*tar.Header{}}
	tr := tar.NewReader(ctxReader{ctx: ctx, r: r})
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("extracting archive: %w", err)
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("reading archive: %w", err)
		}
		if err := x.entry(hdr, tr); err != nil {
			return fmt.Errorf("archive entry %q: %w", hdr.Name, err)
		}
	}
	return x.finishDirs()
}

type extractor struct {
	ctx  context.Context
	root *os.Root
	// dirs are the directory entries seen, whose modes and times are set
	// once every file is in place.
	dirs map[string]*tar.Header
}

func (x *extractor) entry(hdr *tar.Header, body io.Reader) error {
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader:
		return nil // PAX global header: metadata only
	}
	name, err := CleanRelative(hdr.Name)
	if err != nil {
		return err
	}
	if name == "." {
		if hdr.Typeflag == tar.TypeDir {
			return nil // the directory itself
		}
		return errors.New("a non-directory entry names the directory itself")
	}
	if err := checkParents(x.root, name, true); err != nil {
		return err
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		return x.dir(name, hdr)
	case tar.TypeReg, tar.TypeRegA:
		return x.file(name, hdr, body)
	case tar.TypeSymlink:
		return x.replaceWith(name, func(tmp string) error { return x.root.Symlink(hdr.Linkname, tmp) })
	case tar.TypeLink:
		return x.hardLink(name, hdr)
	default:
		return fmt.Errorf("entries of tar type %q (devices, FIFOs, …) are not supported", hdr.Typeflag)
	}
}

func (x *extractor) dir(name string, hdr *tar.Header) error {
	fi, err := x.root.Lstat(name)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return err
	case fi.IsDir():
		x.dirs[name] = hdr
		return nil
	default:
		// A file or link is in the way: replace it (never follow it).
		if err := x.root.Remove(name); err != nil {
			return fmt.Errorf("removing the file in the way: %w", err)
		}
	}
	if err := x.root.Mkdir(name, 0o700); err != nil {
		return err
	}
	x.dirs[name] = hdr
	return nil
}

func (x *extractor) file(name string, hdr *tar.Header, body io.Reader) error {
	return x.replaceWith(name, func(tmp string) error {
		f, err := x.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, ctxReader{ctx: x.ctx, r: body})
		if err == nil {
			err = f.Chmod(fs.FileMode(hdr.Mode).Perm())
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil && !hdr.ModTime.IsZero() {
			err = x.root.Chtimes(tmp, time.Time{}, hdr.ModTime)
		}
		return err
	})
}

func (x *extractor) hardLink(name string, hdr *tar.Header) error {
	target, err := CleanRelative(hdr.Linkname)
	if err != nil {
		return fmt.Errorf("hard link target %q: %w", hdr.Linkname, err)
	}
	if err := checkParents(x.root, target, false); err != nil {
		return fmt.Errorf("hard link target %q: %w", hdr.Linkname, err)
	}
	fi, err := x.root.Lstat(target)
	if err != nil {
		return fmt.Errorf("hard link target %q: %w", hdr.Linkname, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("hard link target %q is not a regular file", hdr.Linkname)
	}
	return x.replaceWith(name, func(tmp string) error { return x.root.Link(target, tmp) })
}

// replaceWith makes a new entry under a temporary name next to name and
// renames it into place, so that readers see either the old entry or the
// whole new one.
func (x *extractor) replaceWith(name string, create func(tmp string) error) error {
	if fi, err := x.root.Lstat(name); err == nil && fi.IsDir() {
		return errors.New("a directory of that name is in the way")
	}
	tmp := path.Join(path.Dir(name), "."+path.Base(name)+".berth-tmp-"+strconv.FormatUint(rand.Uint64(), 36))
	if err := create(tmp); err != nil {
		_ = x.root.Remove(tmp)
		return err
	}
	if err := x.root.Rename(tmp, name); err != nil {
		_ = x.root.Remove(tmp)
		return err
	}
	return nil
}

// finishDirs sets the directories' modes and times, deepest first so that a
// read-only parent does not stop its children being changed.
func (x *extractor) finishDirs() error {
	names := make([]string, 0, len(x.dirs))
	for n := range x.dirs {
		names = append(names, n)
	}
	slices.Sort(names)
	slices.Reverse(names)
	for _, n := range names {
		hdr := x.dirs[n]
		fi, err := x.root.Lstat(n)
		if err != nil {
			return fmt.Errorf("archive entry %q: %w", hdr.Name, err)
		}
		if !fi.IsDir() {
			continue // replaced by a later entry
		}
		if !hdr.ModTime.IsZero() {
			if err := x.root.Chtimes(n, time.Time{}, hdr.ModTime); err != nil {
				return fmt.Errorf("archive entry %q: %w", hdr.Name, err)
			}
		}
		if err := x.root.Chmod(n, fs.FileMode(hdr.Mode).Perm()); err != nil {
			return fmt.Errorf("archive entry %q: %w", hdr.Name, err)
		}
	}
	return nil
}
