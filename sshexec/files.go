package sshexec

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"

	"github.com/berthci/berth/sdk/archive"
)

// uploadScript extracts the tar stream on stdin into $2, a directory
// relative to $1, after making sure no directory on the way is a symbolic
// link. Owners are not restored (-o); modes are, without the umask (-p).
const uploadScript = `cd -- "$1" || exit 2
d=$2
if [ "$d" != . ]; then
  p=.
  set -f; IFS=/
  for c in $d; do
    p=$p/$c
    if [ -L "$p" ]; then echo "${p#./} is a symbolic link" >&2; exit 2; fi
    if [ -e "$p" ] && [ ! -d "$p" ]; then echo "${p#./} is not a directory" >&2; exit 2; fi
  done
  unset IFS; set +f
  mkdir -p -- "./$d" && cd -- "./$d" || exit 2
fi
exec tar -x -o -p -f -
`

// ArchiveError is an entry of an uploaded archive that was refused.
type ArchiveError struct {
	Entry  string
	Reason string
}

func (e *ArchiveError) Error() string {
	return fmt.Sprintf("archive entry %q: %s", e.Entry, e.Reason)
}

// Upload extracts the tar stream r into dir, a path relative to root (""
// or "." is root itself), on the remote host, keeping modes and symbolic
// links. The stream is checked as it passes: an absolute entry, one that
// climbs out with "..", one below a symbolic link the archive made, a hard
// link to anything but a regular file of the archive, or a device, FIFO
// or socket is an *ArchiveError, and nothing after it is extracted. dir
// itself may not go through a symbolic link. Symbolic links that scripts
// made inside dir before the upload are followed by tar, as they would be
// by the scripts themselves.
func (c *Client) Upload(ctx context.Context, root, dir string, r io.Reader) error {
	rel, err := archive.CleanRelative(dir)
	if err != nil {
		return fmt.Errorf("upload to %s: directory %q: %w", c, dir, err)
	}
	p, err := c.start(shellCommand(uploadScript, "berth-upload", root, rel))
	if err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	defer p.ch.Close()
	stderr := &limitedBuffer{max: 8 << 10}
	outCopy := copyOutput(p.ch, io.Discard)
	errCopy := copyOutput(p.ch.Stderr(), stderr)
	sent := make(chan error, 1)
	remote := &recordingWriter{w: p.ch}
	go func() {
		err := checkUpload(remote, ctxReader{ctx, r})
		if err == nil {
			err = p.ch.CloseWrite()
		} else {
			// Cut the stream short: tar sees a broken archive and fails.
			p.ch.Close()
		}
		sent <- err
	}()
	var sendErr error
	select {
	case sendErr = <-sent:
	case <-ctx.Done():
		p.ch.Close()
		return fmt.Errorf("upload to %s: %w", c, ctx.Err())
	}
	var ae *ArchiveError
	if errors.As(sendErr, &ae) || (sendErr != nil && remote.err == nil) {
		return fmt.Errorf("upload to %s: %w", c, sendErr)
	}
	select {
	case <-p.exited:
	case <-ctx.Done():
		return fmt.Errorf("upload to %s: %w", c, ctx.Err())
	}
	waitCopies(outCopy, errCopy)
	code, err := p.status.exitCode()
	switch {
	case err != nil:
		return c.connErr(fmt.Errorf("upload to %s: %w", c, err))
	case code != 0:
		return fmt.Errorf("upload to %s: extracting into %s/%s: %w", c, root, rel, &RemoteError{Target: c.target, ExitCode: code, Stderr: stderr.String()})
	case sendErr != nil:
		return c.connErr(fmt.Errorf("upload to %s: %w", c, sendErr))
	}
	return nil
}

// checkUpload copies the tar stream r to w entry by entry, refusing
// entries that could land outside the directory it is extracted in. Only
// names, types, permission bits, times, sizes and link targets are kept.
func checkUpload(w io.Writer, r io.Reader) error {
	tr := tar.NewReader(r)
	tw := tar.NewWriter(w)
	links := map[string]bool{} // symbolic links the archive made
	files := map[string]bool{} // regular files the archive made
	// below reports the symbolic link of the archive that name is below
	// (or is, with self).
	below := func(name string, self bool) string {
		p := name
		if !self {
			p = path.Dir(name)
		}
		for ; p != "." && p != "/"; p = path.Dir(p) {
			if links[p] {
				return p
			}
		}
		return ""
	}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("reading the archive: %w", err)
		}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		name, err := archive.CleanRelative(hdr.Name)
		if err != nil {
			return &ArchiveError{Entry: hdr.Name, Reason: err.Error()}
		}
		if name == "." {
			continue // the directory itself
		}
		if l := below(name, hdr.Typeflag == tar.TypeDir); l != "" {
			return &ArchiveError{Entry: hdr.Name, Reason: fmt.Sprintf("it goes through the symbolic link %q", l)}
		}
		out := &tar.Header{Name: name, Mode: hdr.Mode & 0o777, ModTime: hdr.ModTime.Truncate(time.Second), Typeflag: hdr.Typeflag}
		switch hdr.Typeflag {
		case tar.TypeReg:
			out.Size = hdr.Size
			files[name] = true
			delete(links, name)
		case tar.TypeDir:
			out.Name += "/"
		case tar.TypeSymlink:
			out.Linkname = hdr.Linkname
			links[name] = true
			delete(files, name)
		case tar.TypeLink:
			target, err := archive.CleanRelative(hdr.Linkname)
			if err != nil || !files[target] || below(target, false) != "" {
				return &ArchiveError{Entry: hdr.Name, Reason: fmt.Sprintf("it is a hard link to %q, which is not a regular file of the archive", hdr.Linkname)}
			}
			out.Linkname = target
			files[name] = true
			delete(links, name)
		default:
			return &ArchiveError{Entry: hdr.Name, Reason: fmt.Sprintf("its type %q is not a file, directory or link", hdr.Typeflag)}
		}
		if err := tw.WriteHeader(out); err != nil {
			return err
		}
		if out.Typeflag == tar.TypeReg {
			if _, err := io.Copy(tw, tr); err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
		}
	}
	return tw.Close()
}

// downloadScript writes a tar stream of the paths $2… (relative to $1)
// that exist to stdout; nothing when none does. A path below a symbolic
// link is refused; a path that is one is stored as the link.
const downloadScript = `cd -- "$1" || exit 2
shift
below_link() {
  b_r=$1 b_q=.
  while :; do
    case $b_r in */*) ;; *) return 1 ;; esac
    b_q=$b_q/${b_r%%/*}
    b_r=${b_r#*/}
    if [ -L "$b_q" ]; then echo "$1: ${b_q#./} is a symbolic link" >&2; return 0; fi
  done
}
for p do
  if below_link "$p"; then exit 2; fi
  if [ "$p" = . ]; then set -- "$@" .
  elif [ -e "./$p" ] || [ -L "./$p" ]; then set -- "$@" "./$p"
  fi
  shift
done
[ "$#" -gt 0 ] || exit 0
exec tar -c -f - -- "$@"
`

// Download writes a tar stream of paths (relative to root; directories
// recursively; symbolic links as links) on the remote host to w. A path
// that does not exist is skipped; one that is absolute, climbs out with
// ".." or goes through a symbolic link is an error. Entries are written
// once each, with their names relative to root and only names, types,
// permission bits, times, sizes and link targets kept.
func (c *Client) Download(ctx context.Context, root string, paths []string, w io.Writer) error {
	args := []string{root}
	for _, p := range paths {
		rel, err := archive.CleanRelative(p)
		if err != nil {
			return fmt.Errorf("download from %s: path %q: %w", c, p, err)
		}
		args = append(args, rel)
	}
	p, err := c.start(shellCommand(downloadScript, "berth-download", args...))
	if err != nil {
		return fmt.Errorf("download: %w", err)
	}
	defer p.ch.Close()
	_ = p.ch.CloseWrite()
	stderr := &limitedBuffer{max: 8 << 10}
	errCopy := copyOutput(p.ch.Stderr(), stderr)
	local := &recordingWriter{w: w}
	copyErr := copyDownload(local, ctxReader{ctx, p.ch})
	if local.err != nil || ctx.Err() != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("download from %s: %w", c, ctx.Err())
		}
		return fmt.Errorf("download from %s: writing the archive: %w", c, local.err)
	}
	select {
	case <-p.exited:
	case <-ctx.Done():
		return fmt.Errorf("download from %s: %w", c, ctx.Err())
	}
	waitCopies(errCopy)
	code, err := p.status.exitCode()
	switch {
	case err != nil:
		return c.connErr(fmt.Errorf("download from %s: %w", c, err))
	case code == 1 && copyErr == nil:
		// GNU tar: some files changed while they were read.
		c.log.Warn("ssh: tar reported files that changed while they were downloaded", "target", c.target, "stderr", stderr.String())
	case code != 0:
		return fmt.Errorf("download from %s: archiving %s: %w", c, root, &RemoteError{Target: c.target, ExitCode: code, Stderr: stderr.String()})
	case copyErr != nil:
		return fmt.Errorf("download from %s: %w", c, copyErr)
	}
	return nil
}

// copyDownload copies the remote tar stream r to w, each entry once,
// names relative to the root.
func copyDownload(w io.Writer, r io.Reader) error {
	tr := tar.NewReader(r)
	tw := tar.NewWriter(w)
	seen := map[string]bool{}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("reading the remote archive: %w", err)
		}
		name, err := archive.CleanRelative(strings.TrimPrefix(hdr.Name, "./"))
		if err != nil {
			return &ArchiveError{Entry: hdr.Name, Reason: err.Error()}
		}
		if name == "." || seen[name] {
			continue
		}
		seen[name] = true
		out := &tar.Header{Name: name, Mode: hdr.Mode & 0o777, ModTime: hdr.ModTime.Truncate(time.Second), Typeflag: hdr.Typeflag}
		switch hdr.Typeflag {
		case tar.TypeReg:
			out.Size = hdr.Size
		case tar.TypeDir:
			out.Name += "/"
		case tar.TypeSymlink:
			out.Linkname = hdr.Linkname
		case tar.TypeLink:
			target, err := archive.CleanRelative(strings.TrimPrefix(hdr.Linkname, "./"))
			if err != nil {
				return &ArchiveError{Entry: hdr.Name, Reason: "hard link " + err.Error()}
			}
			out.Linkname = target
		default:
			continue // devices, FIFOs: not part of a build's files
		}
		if err := tw.WriteHeader(out); err != nil {
			return err
		}
		if out.Typeflag == tar.TypeReg {
			if _, err := io.Copy(tw, tr); err != nil {
				return fmt.Errorf("entry %q: %w", name, err)
			}
		}
	}
	// tar pads its output to a whole record: read the rest so the remote
	// end is not left writing into a full window.
	_, _ = io.Copy(io.Discard, r)
	return tw.Close()
}

// waitCopies waits for output streams to end, at most escapedOutputWait.
func waitCopies(copies ...*copier) {
	timer := time.NewTimer(escapedOutputWait)
	defer timer.Stop()
	for _, cp := range copies {
		select {
		case <-cp.done:
		case <-timer.C:
			return
		}
	}
}

// recordingWriter remembers the first error of the writer it wraps.
type recordingWriter struct {
	w   io.Writer
	err error
}

func (r *recordingWriter) Write(p []byte) (int, error) {
	n, err := r.w.Write(p)
	if err != nil && r.err == nil {
		r.err = err
	}
	return n, err
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
