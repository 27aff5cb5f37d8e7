package lambda

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"sync"

	"github.com/berthci/berth/lambda/protocol"
	"github.com/berthci/berth/sdk"
)

// handleVersion is the version of the handle's State.
const handleVersion = 1

// handleState is what a handle carries, for people reading logs: the
// executor keeps nothing outside its process that Cleanup would have to
// find.
type handleState struct {
	Function  string `json:"function"`
	Qualifier string `json:"qualifier,omitempty"`
	Region    string `json:"region"`
}

// job is what the executor keeps of a prepared job.
type job struct {
	id            string
	p             *profile
	downloadPaths []string

	mu          sync.Mutex
	uploads     []protocol.Upload
	uploadBytes int
	// ran is set once an invocation answered; files and filesErr are what
	// it sent back.
	ran      bool
	files    []byte
	filesErr string

	// gone is closed by Cleanup: a RunSteps still waiting stops waiting.
	gone     chan struct{}
	goneOnce sync.Once
}

func (j *job) drop() { j.goneOnce.Do(func() { close(j.gone) }) }

// Prepare implements sdk.Executor. It checks the job against the function
// (shell, timeout) and keeps its description; nothing is created in AWS.
func (e *Executor) Prepare(_ context.Context, sj sdk.Job) (sdk.Handle, error) {
	e.mu.Lock()
	p := e.prof
	e.mu.Unlock()
	if p == nil {
		return sdk.Handle{}, errors.New("lambda executor: not configured: set function_name in [runners.lambda]")
	}
	switch sj.Shell {
	case "", "sh", "bash":
	default:
		return sdk.Handle{}, fmt.Errorf("lambda executor: job %q wants shell %q; the berth function runs sh scripts (and bash where its runtime has it)", sj.ID, sj.Shell)
	}
	if sj.Timeout > p.s.Timeout {
		return sdk.Handle{}, fmt.Errorf("lambda executor: job %q has a timeout of %s, longer than the %s of the Lambda function (setting timeout; Lambda allows at most %s): give the job timeout: %s or less",
			sj.ID, sj.Timeout, p.s.Timeout, protocol.MaxTimeout, p.s.Timeout)
	}
	if len(sj.Services) > 0 {
		return sdk.Handle{}, fmt.Errorf("lambda executor: job %q needs %d services; a Lambda function cannot start them", sj.ID, len(sj.Services))
	}
	for _, dp := range sj.DownloadPaths {
		if _, err := relPath(dp); err != nil {
			return sdk.Handle{}, fmt.Errorf("lambda executor: job %q: download path %q: %w", sj.ID, dp, err)
		}
	}
	if sj.Image.Name != "" {
		e.logger().Debug("the lambda executor runs no images; ignoring the job's", "job", sj.ID, "image", sj.Image.Name)
	}
	state, err := json.Marshal(handleState{Function: p.s.FunctionName, Qualifier: p.s.Qualifier, Region: p.region})
	if err != nil {
		return sdk.Handle{}, fmt.Errorf("lambda executor: %w", err)
	}
	j := &job{id: sj.ID, p: p, downloadPaths: append([]string(nil), sj.DownloadPaths...), gone: make(chan struct{})}
	e.mu.Lock()
	if old := e.jobs[sj.ID]; old != nil {
		old.drop() // Prepare retried: the new one replaces it
	}
	e.jobs[sj.ID] = j
	e.mu.Unlock()
	return sdk.Handle{JobID: sj.ID, Version: handleVersion, State: state, BuildDir: p.s.BuildDir}, nil
}

func (e *Executor) job(h sdk.Handle) (*job, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	j := e.jobs[h.JobID]
	if j == nil {
		return nil, fmt.Errorf("lambda executor: job %q is not prepared in this executor process (was the plugin restarted? its uploads are lost): %w", h.JobID, sdk.ErrNotFound)
	}
	return j, nil
}

// Cleanup implements sdk.Executor: it drops what the job holds. An
// invocation still running goes on in Lambda until it ends.
func (e *Executor) Cleanup(_ context.Context, h sdk.Handle) error {
	e.mu.Lock()
	j := e.jobs[h.JobID]
	delete(e.jobs, h.JobID)
	e.mu.Unlock()
	if j != nil {
		j.drop()
	}
	return nil
}

// uploadRoom is how much of a request compressed uploads may take: the
// request must be smaller than protocol.RequestLimit, base64 makes 4 bytes
// of 3, and the scripts need room too.
const uploadRoom = (protocol.RequestLimit - 256<<10) / 4 * 3

// Upload implements sdk.Executor. The tar stream is checked (no entry may
// leave dir), compressed and kept until RunSteps sends it.
func (e *Executor) Upload(ctx context.Context, h sdk.Handle, dir string, r io.Reader) error {
	j, err := e.job(h)
	if err != nil {
		return err
	}
	clean, err := relPath(dir)
	if err != nil {
		return fmt.Errorf("lambda executor: uploading into %q: %w", dir, err)
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tee := io.TeeReader(ctxReader{ctx, r}, zw)
	if err := checkTar(tee); err != nil {
		return fmt.Errorf("lambda executor: uploading into %q for job %q: %w", dir, h.JobID, err)
	}
	if _, err := io.Copy(io.Discard, tee); err != nil { // the tar's padding
		return fmt.Errorf("lambda executor: uploading into %q for job %q: %w", dir, h.JobID, err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("lambda executor: compressing the upload: %w", err)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if total := j.uploadBytes + buf.Len(); total > uploadRoom {
		return fmt.Errorf("lambda executor: the files uploaded for job %q are %s compressed, more than the %s a Lambda request can carry (a synchronous invoke takes less than 6 MiB): upload less (e.g. a shallower clone, GIT_DEPTH)",
			h.JobID, mib(total), mib(uploadRoom))
	}
	j.uploadBytes += buf.Len()
	j.uploads = append(j.uploads, protocol.Upload{Dir: clean, TarGz: buf.Bytes()})
	return nil
}

// checkTar reads a tar stream to its end and refuses entries that would
// land outside the directory it is extracted into, and entries the
// function cannot extract (devices, FIFOs).
func checkTar(r io.Reader) error {
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading the archive: %w", err)
		}
		switch hdr.Typeflag {
		case tar.TypeXGlobalHeader:
			continue
		case tar.TypeReg, tar.TypeRegA, tar.TypeDir, tar.TypeSymlink:
		case tar.TypeLink:
			if _, err := relPath(hdr.Linkname); err != nil {
				return fmt.Errorf("archive entry %q: hard link target %q: %w", hdr.Name, hdr.Linkname, err)
			}
		default:
			return fmt.Errorf("archive entry %q: entries of tar type %q (devices, FIFOs, …) are not supported", hdr.Name, hdr.Typeflag)
		}
		if _, err := relPath(hdr.Name); err != nil {
			return fmt.Errorf("archive entry %q: %w", hdr.Name, err)
		}
	}
}

// relPath cleans a slash-separated path that must stay inside the
// directory it is relative to ("" and "." are the directory itself).
func relPath(p string) (string, error) {
	if strings.HasPrefix(p, "/") {
		return "", errors.New("it is an absolute path")
	}
	c := path.Clean("./" + p)
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", errors.New("it leads outside the build directory")
	}
	if c == "." {
		return "", nil
	}
	return c, nil
}

// Download implements sdk.Executor: it writes the files the invocation
// sent back, limited to paths. Each path must be one of the job's
// DownloadPaths or lie below one: the function only sent those.
func (e *Executor) Download(ctx context.Context, h sdk.Handle, paths []string, w io.Writer) error {
	j, err := e.job(h)
	if err != nil {
		return err
	}
	want := make([]string, 0, len(paths))
	for _, p := range paths {
		c, err := relPath(p)
		if err != nil {
			return fmt.Errorf("lambda executor: download path %q: %w", p, err)
		}
		if !covered(c, j.downloadPaths) {
			return fmt.Errorf("lambda executor: job %q: path %q was not among the job's DownloadPaths at Prepare (%s); the function only sent those back",
				h.JobID, p, strings.Join(j.downloadPaths, ", "))
		}
		want = append(want, c)
	}
	j.mu.Lock()
	ran, files, filesErr := j.ran, j.files, j.filesErr
	j.mu.Unlock()
	switch {
	case !ran:
		return fmt.Errorf("lambda executor: job %q has not run: its files come back with the invocation that runs its steps", h.JobID)
	case filesErr != "":
		return fmt.Errorf("lambda executor: the Lambda function could not send back the files of job %q: %s", h.JobID, filesErr)
	}
	tw := tar.NewWriter(w)
	if len(files) > 0 {
		zr, err := gzip.NewReader(bytes.NewReader(files))
		if err != nil {
			return fmt.Errorf("lambda executor: the files the function sent back for job %q: %w", h.JobID, err)
		}
		tr := tar.NewReader(ctxReader{ctx, zr})
		for {
			hdr, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return fmt.Errorf("lambda executor: the files the function sent back for job %q: %w", h.JobID, err)
			}
			if !covered(strings.TrimSuffix(hdr.Name, "/"), want) {
				continue
			}
			if err := tw.WriteHeader(hdr); err != nil {
				return fmt.Errorf("lambda executor: writing %q: %w", hdr.Name, err)
			}
			if _, err := io.Copy(tw, tr); err != nil {
				return fmt.Errorf("lambda executor: writing %q: %w", hdr.Name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("lambda executor: finishing the archive: %w", err)
	}
	return nil
}

// covered reports whether p is one of roots or lies below one.
func covered(p string, roots []string) bool {
	for _, r := range roots {
		r = strings.TrimSuffix(path.Clean("./"+r), "/")
		if r == "." || r == "" || p == r || strings.HasPrefix(p, r+"/") {
			return true
		}
	}
	return false
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

// mib prints a byte count in MiB.
func mib(n int) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
