//go:build linux

package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambdacontext"

	"github.com/berthci/berth/lambda/internal/proctree"
	"github.com/berthci/berth/lambda/protocol"
	"github.com/berthci/berth/sdk/archive"
)

// ScratchEnv names the variable that overrides the scratch directory.
const ScratchEnv = "BERTH_SCRATCH_DIR"

const (
	defaultReserve = 2 * time.Second
	// killWait bounds how long a step's processes may take to die after
	// SIGKILL.
	killWait = 5 * time.Second
	// outputWait is how long the function keeps reading a step's output
	// after its processes are gone.
	outputWait = 2 * time.Second
)

func main() {
	log := lambdacontext.NewLogger()
	scratch := os.Getenv(ScratchEnv)
	if scratch == "" {
		scratch = "/tmp"
	}
	if err := proctree.BecomeSubreaper(); err != nil {
		log.Warn("processes a step leaves in the background may outlive it", "error", err)
	}
	if n := lambdacontext.MaxConcurrency(); n > 1 {
		log.Warn("the function runs one job at a time; invocations that arrive while a job runs are refused", "max_concurrency", n)
	}
	lambda.Start(&handler{log: log, scratch: filepath.Clean(scratch), environ: os.Environ()})
}

// handler runs one job per invocation.
type handler struct {
	log     *slog.Logger
	scratch string
	environ []string
	// busy is held while a job runs: jobs share the scratch directory.
	busy sync.Mutex
}

// Invoke implements lambda.Handler: the payload is a protocol.Request, the
// answer a protocol.Response. An error fails the invocation (Lambda
// reports it as {"errorMessage", "errorType"}).
func (h *handler) Invoke(ctx context.Context, payload []byte) ([]byte, error) {
	if !h.busy.TryLock() {
		return nil, errors.New("berth function: a job is already running in this execution environment; the function runs one job at a time (do not give it more than one concurrent request per environment)")
	}
	defer h.busy.Unlock()
	var head struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(payload, &head); err != nil {
		return nil, fmt.Errorf("berth function: the request is not a JSON object: %w", err)
	}
	if head.Version != protocol.Version {
		return nil, fmt.Errorf("berth function: the request has protocol version %d, this function speaks version %d: deploy the function built by the same berth version as the runner (berth lambda package)", head.Version, protocol.Version)
	}
	var req protocol.Request
	if err := json.Unmarshal(payload, &req); err != nil {
		return nil, fmt.Errorf("berth function: reading the request: %w", err)
	}
	if err := h.check(&req); err != nil {
		return nil, fmt.Errorf("berth function: %w", err)
	}
	limit := req.MaxResponseBytes
	if limit <= 0 || limit > protocol.ResponseLimit {
		limit = protocol.ResponseLimit - 100
	}

	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(protocol.MaxTimeout)
	}
	reserve := time.Duration(req.ReserveMS) * time.Millisecond
	if reserve <= 0 {
		reserve = defaultReserve
	}
	reserve = min(reserve, time.Until(deadline)/2)
	t := timing{stop: deadline.Add(-reserve), kill: deadline.Add(-reserve / 2), deadline: deadline}

	log := h.log.With("job", req.JobID)
	if err := h.wipe(); err != nil {
		return nil, fmt.Errorf("berth function: emptying the scratch directory %s: %w", h.scratch, err)
	}
	defer func() {
		if err := h.wipe(); err != nil {
			log.Error("emptying the scratch directory after the job", "dir", h.scratch, "error", err)
		}
	}()
	resp, streams, err := h.run(ctx, &req, t, limit, log)
	if err != nil {
		return nil, fmt.Errorf("berth function: %w", err)
	}
	body, err := encode(resp, streams, limit)
	if err != nil {
		return nil, fmt.Errorf("berth function: %w", err)
	}
	log.Info("job done", "steps", len(req.Steps), "response_bytes", len(body), "dropped_bytes", resp.DroppedBytes)
	return body, nil
}

// check refuses requests the function cannot run.
func (h *handler) check(req *protocol.Request) error {
	if len(req.Steps) == 0 {
		return errors.New("the request has no steps")
	}
	dir := filepath.Clean(req.BuildDir)
	rel, err := filepath.Rel(h.scratch, dir)
	if !filepath.IsAbs(req.BuildDir) || err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
		return fmt.Errorf("the build directory %q is not inside the function's scratch directory %s (set the executor's build_dir below it)", req.BuildDir, h.scratch)
	}
	req.BuildDir = dir
	return nil
}

// timing is when the function stops a job: stop is when the running step
// gets SIGTERM, kill when it gets SIGKILL at the latest; deadline is
// Lambda's own.
type timing struct {
	stop, kill, deadline time.Time
}

// run runs the job in the emptied scratch directory.
func (h *handler) run(ctx context.Context, req *protocol.Request, t timing, limit int, log *slog.Logger) (*protocol.Response, []stream, error) {
	home := filepath.Join(h.scratch, ".berth-home")
	scripts := filepath.Join(h.scratch, ".berth-scripts")
	for _, d := range []string{req.BuildDir, home, scripts} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, nil, fmt.Errorf("creating %s: %w", d, err)
		}
	}
	for i, u := range req.Uploads {
		if err := extract(ctx, req.BuildDir, u); err != nil {
			return nil, nil, fmt.Errorf("placing uploaded files %d into %q: %w", i+1, u.Dir, err)
		}
	}
	env := h.env(map[string]string{"HOME": home, "TMPDIR": h.scratch}, req.Env)

	resp := &protocol.Response{Version: protocol.Version, Steps: make([]protocol.StepResult, len(req.Steps))}
	var streams []stream
	failed := false
	outOfTime := false
	for i, st := range req.Steps {
		r := &resp.Steps[i]
		stdout, stderr := newCapture(limit), newCapture(limit)
		switch {
		case outOfTime || !time.Now().Before(t.stop):
			*r = protocol.StepResult{Skipped: true, Deadline: true}
			if !outOfTime {
				stderr.note(fmt.Sprintf("[berth] step %q not run: the Lambda invocation has no time left (the function stops jobs %s before its timeout)\n", st.Name, t.deadline.Sub(t.stop).Round(time.Millisecond)))
			}
			outOfTime = true
		case failed && st.When != protocol.Always:
			*r = protocol.StepResult{Skipped: true}
		default:
			*r = runStep(st, stepEnv{dir: req.BuildDir, scripts: scripts, env: env, index: i}, t, stdout, stderr, log)
			failed = failed || r.ExitCode != 0 || r.TimedOut || r.Error != ""
			outOfTime = outOfTime || r.Deadline
		}
		streams = append(streams,
			stdout.stream(fmt.Sprintf("stdout of step %q", st.Name), &r.Stdout),
			stderr.stream(fmt.Sprintf("stderr of step %q", st.Name), &r.Stderr))
	}
	if len(req.DownloadPaths) > 0 {
		files, err := collect(ctx, req.BuildDir, req.DownloadPaths)
		if err != nil {
			resp.FilesError = fmt.Sprintf("collecting %s: %v", strings.Join(req.DownloadPaths, ", "), err)
		} else {
			resp.FilesTarGz = files
		}
	}
	return resp, streams, nil
}

// env is the function's environment without the runtime's own variables,
// then extra, then the request's variables (later ones win).
func (h *handler) env(extra, vars map[string]string) []string {
	m := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := m[k]; !ok {
			order = append(order, k)
		}
		m[k] = v
	}
	for _, kv := range h.environ {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "AWS_LAMBDA_RUNTIME_API" || k == "_HANDLER" || k == ScratchEnv {
			continue
		}
		set(k, v)
	}
	for k, v := range extra {
		set(k, v)
	}
	for k, v := range vars {
		set(k, v)
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+m[k])
	}
	return out
}

func extract(ctx context.Context, buildDir string, u protocol.Upload) error {
	dir, err := archive.Join(buildDir, u.Dir)
	if err != nil {
		return err
	}
	zr, err := gzip.NewReader(bytes.NewReader(u.TarGz))
	if err != nil {
		return fmt.Errorf("the upload is not gzip-compressed: %w", err)
	}
	return archive.Extract(ctx, zr, dir)
}

func collect(ctx context.Context, buildDir string, paths []string) ([]byte, error) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if err := archive.Write(ctx, zw, buildDir, paths); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// wipe empties the scratch directory. Directories a job made read-only
// are made writable first.
func (h *handler) wipe() error {
	entries, err := os.ReadDir(h.scratch)
	if errors.Is(err, fs.ErrNotExist) {
		return os.MkdirAll(h.scratch, 0o700)
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		p := filepath.Join(h.scratch, e.Name())
		if os.RemoveAll(p) == nil {
			continue
		}
		_ = filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				_ = os.Chmod(path, 0o700)
			}
			return nil
		})
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
