package kubernetes

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/sdk/archive"
)

// noTar is the exit code of the file commands when the image has no tar.
const noTar = 127

// uploadCommand extracts the tar stream on stdin into the directory $1,
// made when missing. When it fails it reads the rest of stdin first: an
// exec whose process ends while stdin still comes does not end for the
// client until its connection times out (measured: a minute), and then
// looks like a broken connection.
const uploadCommand = `berth_drain() { cat >/dev/null 2>&1; exit "$1"; }
command -v tar >/dev/null 2>&1 || berth_drain 127
mkdir -p "$1" && cd "$1" || berth_drain 1
tar -x -f - && exit 0
berth_drain $?`

// downloadCommand writes a tar archive of those of the paths $3… that
// exist, relative to $1, to the file $2 ("-": stdout); it exits 3 (writing
// nothing) when none does.
const downloadCommand = `command -v tar >/dev/null 2>&1 || exit 127
cd "$1" 2>/dev/null || exit 3
out=$2; shift 2
for p in "$@"; do
	shift
	if [ -e "$p" ] || [ -L "$p" ]; then set -- "$@" "$p"; fi
done
[ $# -gt 0 ] || exit 3
exec tar -c -f "$out" "$@"`

// Upload implements sdk.Executor: the tar stream is checked here (no entry
// may lead outside dir, also not through a symbolic link it made) and
// extracted by tar in the build container.
func (e *Executor) Upload(ctx context.Context, h sdk.Handle, dir string, r io.Reader) error {
	st, err := decodeState(h)
	if err != nil {
		return err
	}
	_, c, err := e.current()
	if err != nil {
		return err
	}
	rel, err := archive.CleanRelative(dir)
	if err != nil {
		return fmt.Errorf("uploading into %q for job %q: %w", dir, h.JobID, err)
	}
	target := path.Join(st.BuildDir, rel)
	doing := fmt.Sprintf("uploading into %s of job %q", target, h.JobID)

	// The archive is also kept in a local file, to resume from when the
	// exec's connection breaks (see transfer.go).
	pr, pw := io.Pipe()
	tee := &spoolingWriter{live: pw}
	spool, err := os.CreateTemp("", "berth-kubernetes-upload-*.tar")
	if err != nil {
		tee.spoolErr = fmt.Errorf("a local file to keep a copy of the archive in: %w", err)
	} else {
		tee.spool = spool
		defer func() {
			spool.Close()
			os.Remove(spool.Name())
		}()
	}
	checked := make(chan error, 1)
	go func() {
		err := copyChecked(tee, r)
		// A plain close: an error here would only be logged by the exec's
		// stdin copier; Upload reports it below.
		pw.Close()
		checked <- err
	}()
	var stdout, stderr bytes.Buffer
	code, err := c.exec(ctx, st.Namespace, st.Pod, buildContainer, []string{"sh", "-c", uploadCommand, "berth-upload", target},
		execIO{stdin: pr, stdout: &stdout, stderr: &stderr})
	broken := err != nil && ctx.Err() == nil
	if broken {
		tee.detach() // the rest of the archive goes to the local copy only
	}
	pr.CloseWithError(errors.New("the upload ended"))
	cerr := <-checked
	if errors.Is(cerr, errUnsafeEntry) {
		return fmt.Errorf("%s: %w", doing, cerr)
	}
	if broken && (cerr == nil || tee.spoolError() != nil) {
		if perr := e.podFailure(c, st, true); perr != nil {
			return fmt.Errorf("%s: %w", doing, perr)
		}
		if serr := tee.spoolError(); serr != nil {
			return fmt.Errorf("%s: the exec's connection broke (%v), and there is nothing to resume from: %w", doing, err, serr)
		}
		size, serr := spool.Seek(0, io.SeekEnd)
		if serr != nil {
			return fmt.Errorf("%s: reading the local copy of the archive: %w", doing, serr)
		}
		e.logger().Warn("an upload's exec broke; resuming through a copy in the pod", "pod", st.Namespace+"/"+st.Pod, "bytes", size, "error", err)
		if rerr := e.resumeUpload(ctx, c, st, target, spool, size); rerr != nil {
			return fmt.Errorf("%s: the exec's connection broke (%v), and resuming failed: %w", doing, err, rerr)
		}
		return nil
	}
	if serr := tee.spoolError(); serr != nil {
		e.logger().Warn("an upload had no local copy to resume from, had its exec broken", "pod", st.Namespace+"/"+st.Pod, "error", serr)
	}
	stderr.Write(stdout.Bytes())
	if err := e.fileResult(st, doing, code, err, &stderr); err != nil {
		return err
	}
	if cerr != nil {
		return fmt.Errorf("%s: %w", doing, cerr)
	}
	return nil
}

// errNoTar says why files cannot move.
var errNoTar = errors.New("the job's image has no tar; the kubernetes executor moves files with tar, so use an image that has it")

// errUnsafeEntry marks an archive entry that would land outside the
// directory it is extracted in.
var errUnsafeEntry = errors.New("refused")

// fileResult words the end of a file transfer.
func (e *Executor) fileResult(st jobState, doing string, code int, err error, stderr *bytes.Buffer) error {
	if err != nil {
		if _, c, cerr := e.current(); cerr == nil {
			if perr := e.podFailure(c, st, true); perr != nil {
				return fmt.Errorf("%s: %w", doing, perr)
			}
		}
		return fmt.Errorf("%s: the exec in pod %s/%s failed: %w", doing, st.Namespace, st.Pod, err)
	}
	switch code {
	case 0:
		return nil
	case noTar:
		return fmt.Errorf("%s: %w", doing, errNoTar)
	}
	return fmt.Errorf("%s: tar exited with %d: %s", doing, code, strings.TrimSpace(stderr.String()))
}

// copyChecked copies the tar stream r to w, failing on the first entry
// that would land outside the directory it is extracted in.
func copyChecked(w io.Writer, r io.Reader) error {
	tr := tar.NewReader(r)
	tw := tar.NewWriter(w)
	links := map[string]bool{}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return tw.Close()
		}
		if err != nil {
			return fmt.Errorf("reading the archive: %w", err)
		}
		name, err := archive.CleanRelative(hdr.Name)
		if err != nil {
			return fmt.Errorf("archive entry %q %w: %w", hdr.Name, errUnsafeEntry, err)
		}
		for p := path.Dir(name); p != "."; p = path.Dir(p) {
			if links[p] {
				return fmt.Errorf("archive entry %q %w: it would be written through the symbolic link %q", hdr.Name, errUnsafeEntry, p)
			}
		}
		switch hdr.Typeflag {
		case tar.TypeSymlink:
			links[name] = true
		case tar.TypeLink:
			if _, err := archive.CleanRelative(hdr.Linkname); err != nil {
				return fmt.Errorf("archive entry %q, a hard link to %q, %w: %w", hdr.Name, hdr.Linkname, errUnsafeEntry, err)
			}
		default:
			delete(links, name)
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("archive entry %q: %w", hdr.Name, err)
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return fmt.Errorf("archive entry %q: %w", hdr.Name, err)
		}
	}
}

// Download implements sdk.Executor: tar in the build container writes the
// paths that exist.
func (e *Executor) Download(ctx context.Context, h sdk.Handle, paths []string, w io.Writer) error {
	st, err := decodeState(h)
	if err != nil {
		return err
	}
	_, c, err := e.current()
	if err != nil {
		return err
	}
	doing := fmt.Sprintf("downloading from job %q", h.JobID)
	args := []string{"sh", "-c", downloadCommand, "berth-download", st.BuildDir, "-"}
	for _, p := range paths {
		rel, err := archive.CleanRelative(p)
		if err != nil {
			return fmt.Errorf("%s: path %q: %w", doing, p, err)
		}
		if strings.HasPrefix(rel, "-") {
			rel = "./" + rel
		}
		args = append(args, rel)
	}
	if len(args) == 6 {
		return tar.NewWriter(w).Close()
	}
	var stderr bytes.Buffer
	out := newHashingWriter(w)
	code, err := c.exec(ctx, st.Namespace, st.Pod, buildContainer, args, execIO{stdout: out, stderr: &stderr})
	if err == nil && code == 3 {
		return tar.NewWriter(w).Close()
	}
	if err != nil && out.err == nil && ctx.Err() == nil {
		if perr := e.podFailure(c, st, true); perr != nil {
			return fmt.Errorf("%s: %w", doing, perr)
		}
		e.logger().Warn("a download's exec broke; resuming through a copy in the pod", "pod", st.Namespace+"/"+st.Pod, "bytes", out.n, "error", err)
		if rerr := e.resumeDownload(ctx, c, st, args, out); rerr != nil {
			return fmt.Errorf("%s: the exec's connection broke after %d bytes (%v), and resuming failed: %w", doing, out.n, err, rerr)
		}
		return nil
	}
	return e.fileResult(st, doing, code, err, &stderr)
}
