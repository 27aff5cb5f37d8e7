package archive

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Write writes a tar stream of paths to w. The paths are relative to root
// (slash- or OS-separated); entry names are relative to root too. A
// directory is stored with everything below it, in lexical order; the
// paths themselves are taken in sorted order and each entry is stored once,
// so the same tree always gives the same sequence of entries. Symbolic
// links are stored as links, never followed. A path that does not exist is
// skipped; a path that is absolute, climbs out of root or goes through a
// symbolic link is an error naming it. Sockets, devices and FIFOs are
// skipped.
func Write(ctx context.Context, w io.Writer, root string, paths []string) error {
	r, err := os.OpenRoot(root)
	if err != nil {
		return fmt.Errorf("opening the directory to archive: %w", err)
	}
	defer r.Close()
	tw := tar.NewWriter(w)
	wr := writer{ctx: ctx, root: r, tw: tw, seen: map[string]bool{}}
	for _, p := range sortedUnique(paths) {
		name, err := CleanRelative(filepath.ToSlash(p))
		if err != nil {
			return fmt.Errorf("path %q: %w", p, err)
		}
		if err := wr.path(name); err != nil {
			return fmt.Errorf("path %q: %w", p, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("finishing the archive: %w", err)
	}
	return nil
}

type writer struct {
	ctx  context.Context
	root *os.Root
	tw   *tar.Writer
	seen map[string]bool
}

// missing reports whether err means the path is not there.
func missing(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

func (wr *writer) path(name string) error {
	if err := checkParents(wr.root, name, false); err != nil {
		if missing(err) {
			return nil
		}
		return err
	}
	fi, err := wr.root.Lstat(name)
	if missing(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return wr.entry(name, fi)
	}
	return fs.WalkDir(wr.root.FS(), name, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if missing(err) {
				return nil // removed while we walk
			}
			return err
		}
		info, err := d.Info()
		if missing(err) {
			return nil
		}
		if err != nil {
			return err
		}
		return wr.entry(p, info)
	})
}

// entry stores one file, directory or link. The directory itself (".") is
// not stored: its contents are.
func (wr *writer) entry(name string, fi fs.FileInfo) error {
	if err := wr.ctx.Err(); err != nil {
		return err
	}
	if name == "." || wr.seen[name] {
		return nil
	}
	wr.seen[name] = true
	hdr := &tar.Header{
		Name:    name,
		Mode:    int64(fi.Mode().Perm()),
		ModTime: fi.ModTime().Truncate(time.Second),
	}
	switch mode := fi.Mode(); {
	case mode.IsDir():
		hdr.Typeflag = tar.TypeDir
		hdr.Name += "/"
		return wr.header(hdr)
	case mode&fs.ModeSymlink != 0:
		target, err := wr.root.Readlink(name)
		if err != nil {
			return fmt.Errorf("reading symbolic link %q: %w", name, err)
		}
		hdr.Typeflag = tar.TypeSymlink
		hdr.Linkname = target
		return wr.header(hdr)
	case mode.IsRegular():
		return wr.file(name, hdr, fi)
	default:
		return nil // sockets, devices, FIFOs
	}
}

func (wr *writer) header(hdr *tar.Header) error {
	if err := wr.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("writing archive entry %q: %w", hdr.Name, err)
	}
	return nil
}

func (wr *writer) file(name string, hdr *tar.Header, fi fs.FileInfo) error {
	f, err := wr.root.Open(name)
	if missing(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("opening %q: %w", name, err)
	}
	defer f.Close()
	// The entry was a regular file when listed; if it has been replaced
	// since (by a link, say), do not read what it now points at.
	if now, err := f.Stat(); err != nil || !os.SameFile(fi, now) {
		return fmt.Errorf("file %q changed while being archived", name)
	}
	size := fi.Size()
	hdr.Typeflag = tar.TypeReg
	hdr.Size = size
	if err := wr.header(hdr); err != nil {
		return err
	}
	// Store exactly the size announced: a file that grows is cut, a file
	// that shrinks is an error (the entry cannot be completed truthfully).
	n, err := io.CopyN(wr.tw, ctxReader{ctx: wr.ctx, r: f}, size)
	if err == io.EOF {
		return fmt.Errorf("file %q shrank from %d to %d bytes while being archived", name, size, n)
	}
	if err != nil {
		return fmt.Errorf("archiving file %q: %w", name, err)
	}
	return nil
}
