package kubernetes

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Files move with tar over exec, and exec connections through the API
// server break now and then (see Run). A transfer whose connection broke is
// taken up again through a copy of the archive in the pod, on the build
// volume, that each further exec continues from the bytes already moved:
//
//   - Upload keeps the archive it streams in a local file as well; after a
//     break it appends that file to the pod's copy from the size the pod
//     reports, then extracts the copy (tar -x again overwrites what the
//     broken stream had extracted).
//   - Download streams tar's output directly; after a break it has tar make
//     the archive again into the pod's copy, checks that its first bytes are
//     those already handed on (sha256sum in the pod), and streams the rest
//     of the copy from there. Files changed in between fail the download
//     rather than splicing two archives together.
//
// The copy in the pod is removed at the end; the pod goes with the job.

// sizeCommand prints the size of the file $1, made empty (with its
// folder) when missing.
const sizeCommand = `mkdir -p "${1%/*}" || exit 1
[ -e "$1" ] || : >"$1" || exit 1
wc -c <"$1"`

// appendCommand appends stdin to the file $1 when it has $2 bytes; exit 4
// when it has not. cat must not be the exec's own process (exec cat, or
// cat as the script's last command, which busybox sh runs as an exec):
// measured here, busybox cat in that place took an end of stdin after the
// first 32 KiB to 1.2 MiB of 20 MiB, and exited 0. The caller reads the
// size again after each append all the same.
const appendCommand = `n=$(wc -c <"$1") || exit 1
[ "$n" -eq "$2" ] || { echo "it has $n bytes, not $2" >&2; exit 4; }
cat >>"$1"
exit $?`

// extractCommand extracts the archive $2, which must have $3 bytes, into
// the directory $1 (made when missing); exit 4 when its size differs.
const extractCommand = `command -v tar >/dev/null 2>&1 || exit 127
n=$(wc -c <"$2") || exit 4
[ "$n" -eq "$3" ] || exit 4
mkdir -p "$1" && cd "$1" && exec tar -x -f "$2"`

// prefixCommand prints the size of the file $1 and the sha256 of its first
// $2 bytes; exit 127 without sha256sum.
const prefixCommand = `command -v sha256sum >/dev/null 2>&1 || exit 127
wc -c <"$1" || exit 1
head -c "$2" "$1" | sha256sum`

// tailCommand writes the file $1 from byte $2 (counted from 0) on.
const tailCommand = `tail -c "+$(($2 + 1))" "$1"`

// retries bounds how often a broken exec is taken up again: resumeAttempts
// in a row without progress, with a pause that grows with each of them.
type retries struct {
	attempt int
	seen    int64
}

// again says whether to try once more now that progress (a count of bytes
// moved) is where it is; it waits out the pause first. False when the
// attempts are used up or ctx ended.
func (r *retries) again(ctx context.Context, progress int64) bool {
	if progress > r.seen {
		r.attempt, r.seen = 0, progress
	}
	r.attempt++
	if r.attempt > resumeAttempts {
		return false
	}
	select {
	case <-ctx.Done():
		return false
	case <-time.After(time.Duration(r.attempt) * 200 * time.Millisecond):
		return true
	}
}

// spoolingWriter writes everything to spool and, until detach, also to
// live: the local copy an upload resumes from. The copy is a spare: when
// it cannot be written (no room), the writes to live go on without it, and
// spoolErr says why there is nothing to resume from.
type spoolingWriter struct {
	mu       sync.Mutex
	spool    io.Writer
	spoolErr error
	live     io.Writer
}

func (w *spoolingWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	spool, live := w.spool, w.live
	w.mu.Unlock()
	if spool != nil {
		if _, err := spool.Write(p); err != nil {
			w.mu.Lock()
			w.spool, w.spoolErr = nil, fmt.Errorf("keeping a local copy of the archive to resume from: %w", err)
			w.mu.Unlock()
			spool = nil
		}
	}
	if live == nil {
		if spool == nil {
			return 0, w.spoolError()
		}
		return len(p), nil
	}
	if _, err := live.Write(p); err != nil {
		w.mu.Lock()
		detached := w.live == nil
		w.mu.Unlock()
		if !detached || spool == nil {
			return 0, err
		}
	}
	return len(p), nil
}

// detach stops the writes to live; those to spool go on.
func (w *spoolingWriter) detach() {
	w.mu.Lock()
	w.live = nil
	w.mu.Unlock()
}

// spoolError is why the local copy is missing, nil when it is not.
func (w *spoolingWriter) spoolError() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.spoolErr
}

// podCopy names the copy of an archive in the pod: on the build volume,
// beside the steps' output.
func podCopy(st jobState, kind string) string {
	return path.Join(path.Dir(st.BuildDir), outputDir, kind+"-"+randomID()+".tar")
}

// resumeUpload moves the archive in spool (size bytes) into the pod's
// copy, continuing after each broken exec from what the pod has, then
// extracts it into target.
func (e *Executor) resumeUpload(ctx context.Context, c *cluster, st jobState, target string, spool *os.File, size int64) error {
	remote := podCopy(st, "upload")
	defer e.removeCopy(c, st, remote)
	var rt retries
	var have int64
	for {
		var stdout, stderr bytes.Buffer
		code, err := c.exec(ctx, st.Namespace, st.Pod, buildContainer,
			[]string{"sh", "-c", sizeCommand, "berth-size", remote}, execIO{stdout: &stdout, stderr: &stderr})
		if err == nil {
			if code != 0 {
				return fmt.Errorf("making %s in the pod exited %d: %s", remote, code, strings.TrimSpace(stderr.String()))
			}
			if have, err = strconv.ParseInt(strings.TrimSpace(stdout.String()), 10, 64); err != nil || have < 0 || have > size {
				return fmt.Errorf("the pod's copy %s has %q bytes; want at most the archive's %d", remote, strings.TrimSpace(stdout.String()), size)
			}
			if have == size {
				break
			}
			stderr.Reset()
			code, err = c.exec(ctx, st.Namespace, st.Pod, buildContainer,
				[]string{"sh", "-c", appendCommand, "berth-append", remote, strconv.FormatInt(have, 10)},
				execIO{stdin: io.NewSectionReader(spool, have, size-have), stderr: &stderr})
			if err == nil && code != 0 {
				return fmt.Errorf("appending to %s in the pod exited %d: %s", remote, code, strings.TrimSpace(stderr.String()))
			}
		}
		// After an append that ended well the size is read again, and
		// counts as an attempt only if it did not grow.
		if !rt.again(ctx, have) {
			if err == nil {
				err = errors.New("the appends end without it growing")
			}
			return fmt.Errorf("the pod's copy %s stopped at %d of %d bytes: %w", remote, have, size, err)
		}
		if err == nil {
			continue
		}
		e.logger().Warn("an upload's exec broke again; resuming", "pod", st.Namespace+"/"+st.Pod, "bytes", have, "of", size, "error", err)
	}
	code, _, stderr, err := e.execAgain(ctx, c, st, []string{"sh", "-c", extractCommand, "berth-extract", target, remote, strconv.FormatInt(size, 10)})
	switch {
	case err != nil:
		return fmt.Errorf("extracting %s in the pod: %w", remote, err)
	case code == 4:
		return fmt.Errorf("the pod's copy %s is not the %d bytes sent: %s", remote, size, stderr)
	case code == noTar:
		return errNoTar
	case code != 0:
		return fmt.Errorf("tar exited with %d: %s", code, stderr)
	}
	return nil
}

// execAgain runs cmd (one that may run twice) in the build container,
// again after each broken connection, until an exec of it ends. It returns
// the exit code and the output, stderr trimmed.
func (e *Executor) execAgain(ctx context.Context, c *cluster, st jobState, cmd []string) (code int, stdout, stderr string, err error) {
	var rt retries
	for {
		var out, errb bytes.Buffer
		code, err := c.exec(ctx, st.Namespace, st.Pod, buildContainer, cmd, execIO{stdout: &out, stderr: &errb})
		if err == nil {
			return code, out.String(), strings.TrimSpace(errb.String()), nil
		}
		if !rt.again(ctx, 0) {
			return -1, "", "", err
		}
		e.logger().Warn("an exec broke; running it again", "pod", st.Namespace+"/"+st.Pod, "command", strings.Join(cmd[min(3, len(cmd)-1):], " "), "error", err)
	}
}

// hashingWriter counts and hashes the bytes written through it; err is
// the first error of w (the reader of the download stopped).
type hashingWriter struct {
	w   io.Writer
	n   int64
	h   hash.Hash
	err error
}

func newHashingWriter(w io.Writer) *hashingWriter { return &hashingWriter{w: w, h: sha256.New()} }

func (w *hashingWriter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	if err != nil && w.err == nil {
		w.err = err
	}
	return n, err
}

// resumeDownload finishes a download whose stream broke after out.n
// bytes: tar makes the archive again into the pod's copy (args are
// downloadCommand's), its first out.n bytes are checked against those
// sent, and the rest is streamed from the copy.
func (e *Executor) resumeDownload(ctx context.Context, c *cluster, st jobState, args []string, out *hashingWriter) error {
	remote := podCopy(st, "download")
	defer e.removeCopy(c, st, remote)
	args = append([]string(nil), args...)
	args[5] = remote // the output file, "-" in the first attempt
	code, _, stderr, err := e.execAgain(ctx, c, st, args)
	switch {
	case err != nil:
		return fmt.Errorf("making the archive again in the pod: %w", err)
	case code == 3:
		return fmt.Errorf("the paths to download are gone from the pod since the download began")
	case code == noTar:
		return errNoTar
	case code != 0:
		return fmt.Errorf("making the archive again in the pod: tar exited with %d: %s", code, stderr)
	}
	sent := out.n
	code, stdout, stderr, err := e.execAgain(ctx, c, st, []string{"sh", "-c", prefixCommand, "berth-prefix", remote, strconv.FormatInt(sent, 10)})
	switch {
	case err != nil:
		return fmt.Errorf("checking the archive made again in the pod: %w", err)
	case code == 127:
		return fmt.Errorf("the job's image has no sha256sum, needed to check the archive made again against the %d bytes already sent", sent)
	case code != 0:
		return fmt.Errorf("checking the archive made again in the pod exited %d: %s", code, stderr)
	}
	fields := strings.Fields(stdout)
	if len(fields) < 2 {
		return fmt.Errorf("checking the archive made again in the pod printed %q; want its size and sha256", stdout)
	}
	size, err := strconv.ParseInt(fields[0], 10, 64)
	if err != nil {
		return fmt.Errorf("checking the archive made again in the pod printed %q; want its size and sha256", stdout)
	}
	if size < sent || fields[1] != hex.EncodeToString(out.h.Sum(nil)) {
		return fmt.Errorf("the files changed since the download began: the archive made again (%d bytes) does not begin with the %d bytes already sent", size, sent)
	}
	var rt retries
	for out.n < size {
		var stderr bytes.Buffer
		code, err := c.exec(ctx, st.Namespace, st.Pod, buildContainer,
			[]string{"sh", "-c", tailCommand, "berth-tail", remote, strconv.FormatInt(out.n, 10)}, execIO{stdout: out, stderr: &stderr})
		if out.err != nil {
			return out.err
		}
		if err == nil && code != 0 {
			return fmt.Errorf("reading the pod's copy %s exited %d: %s", remote, code, strings.TrimSpace(stderr.String()))
		}
		if out.n > size {
			return fmt.Errorf("the pod's copy %s gave %d bytes, more than its %d", remote, out.n, size)
		}
		if out.n < size && !rt.again(ctx, out.n) {
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("the download stopped at %d of %d bytes: %w", out.n, size, err)
		}
	}
	return nil
}

// removeCopy deletes the pod's copy of an archive; a failure is only
// logged, as the copy goes with the pod.
func (e *Executor) removeCopy(c *cluster, st jobState, remote string) {
	ctx, cancel := context.WithTimeout(context.Background(), controlTimeout)
	defer cancel()
	code, err := c.exec(ctx, st.Namespace, st.Pod, buildContainer, []string{"rm", "-f", remote}, execIO{stderr: io.Discard})
	if err != nil || code != 0 {
		e.logger().Warn("removing the copy of an archive in the pod", "pod", st.Namespace+"/"+st.Pod, "file", remote, "exit_code", code, "error", err)
	}
}
