package shell

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/sdk/archive"
)

// stateVersion is the version of jobState in the handles Prepare returns.
const stateVersion = 1

// jobState is what a prepared job keeps in its Handle.State: the settings
// it was prepared with, so that a later Configure does not change it.
type jobState struct {
	BuildDir      string   `json:"build_dir"`
	Shell         string   `json:"shell,omitempty"`
	KeepBuildsDir bool     `json:"keep_builds_dir,omitempty"`
	EnvAllowlist  []string `json:"env_allowlist"`
}

// dirName is the name of a job's build directory below builds_dir.
func dirName(jobID string) string { return archive.JobDirName(jobID) }

// Prepare implements sdk.Executor: it makes the job's build directory,
// <builds_dir>/<job ID>, and its sibling <build dir>.tmp for the files a
// step needs outside the checkout (the script itself, file variables).
// Preparing the same job again reuses both.
func (e *Executor) Prepare(_ context.Context, job sdk.Job) (sdk.Handle, error) {
	cfg := e.settings()
	if job.Shell != "" && job.Shell != "bash" && job.Shell != "sh" {
		return sdk.Handle{}, fmt.Errorf("job %q wants shell %q; the shell executor runs bash and sh", job.ID, job.Shell)
	}
	if job.Image.Name != "" || len(job.Services) > 0 {
		e.logger().Debug("the shell executor ignores images and services", "job", job.ID)
	}
	st := jobState{
		BuildDir:      filepath.Join(cfg.BuildsDir, dirName(job.ID)),
		Shell:         cfg.Shell,
		KeepBuildsDir: cfg.KeepBuildsDir,
		EnvAllowlist:  cfg.EnvAllowlist,
	}
	for _, d := range []string{st.BuildDir, st.BuildDir + ".tmp"} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return sdk.Handle{}, fmt.Errorf("creating the build directory of job %q: %w", job.ID, err)
		}
	}
	b, err := json.Marshal(st)
	if err != nil {
		return sdk.Handle{}, fmt.Errorf("encoding the handle of job %q: %w", job.ID, err)
	}
	return sdk.Handle{JobID: job.ID, Version: stateVersion, State: b, BuildDir: st.BuildDir}, nil
}

// state reads a handle's state and checks that its build directory is
// still there.
func (e *Executor) state(h sdk.Handle) (jobState, error) {
	st, err := decodeState(h)
	if err != nil {
		return st, err
	}
	fi, err := os.Stat(st.BuildDir)
	if errors.Is(err, fs.ErrNotExist) {
		return st, fmt.Errorf("job %q has no build directory %s (cleaned up already?): %w", h.JobID, st.BuildDir, sdk.ErrNotFound)
	}
	if err != nil {
		return st, fmt.Errorf("build directory of job %q: %w", h.JobID, err)
	}
	if !fi.IsDir() {
		return st, fmt.Errorf("build directory %s of job %q is not a directory", st.BuildDir, h.JobID)
	}
	return st, nil
}

func decodeState(h sdk.Handle) (jobState, error) {
	var st jobState
	if h.Version != stateVersion {
		return st, fmt.Errorf("the handle of job %q has state version %d; this shell executor (%s) reads version %d", h.JobID, h.Version, Version, stateVersion)
	}
	if err := json.Unmarshal(h.State, &st); err != nil {
		return st, fmt.Errorf("the handle of job %q holds no valid state: %w", h.JobID, err)
	}
	// The build directory is removed on Cleanup: make sure a damaged
	// handle cannot point that at anything but a job's directory.
	if !filepath.IsAbs(st.BuildDir) || filepath.Clean(st.BuildDir) != st.BuildDir || filepath.Base(st.BuildDir) != dirName(h.JobID) {
		return st, fmt.Errorf("the handle of job %q names build directory %q, which is not that job's", h.JobID, st.BuildDir)
	}
	return st, nil
}

// Cleanup implements sdk.Executor: it kills the job's steps still
// running, removes the build directory (unless keep_builds_dir was set
// when the job was prepared) and always removes <build dir>.tmp. A handle
// without state (Prepare failed) means the directory Prepare would have
// made with the current settings. Cleaning up twice is fine.
func (e *Executor) Cleanup(ctx context.Context, h sdk.Handle) error {
	var errs []error
	if err := e.killJob(ctx, h.JobID); err != nil {
		errs = append(errs, err)
	}
	if err := killStrays(h.JobID); err != nil {
		errs = append(errs, err)
	}
	var st jobState
	if len(h.State) == 0 {
		cfg := e.settings()
		st = jobState{BuildDir: filepath.Join(cfg.BuildsDir, dirName(h.JobID)), KeepBuildsDir: cfg.KeepBuildsDir}
	} else {
		var err error
		if st, err = decodeState(h); err != nil {
			return err
		}
	}
	if err := removeTree(st.BuildDir + ".tmp"); err != nil {
		errs = append(errs, fmt.Errorf("removing the temporary directory of job %q: %w", h.JobID, err))
	}
	if !st.KeepBuildsDir {
		if err := removeTree(st.BuildDir); err != nil {
			errs = append(errs, fmt.Errorf("removing the build directory of job %q: %w", h.JobID, err))
		}
	}
	return errors.Join(errs...)
}

// removeTree removes dir and everything below it, also when a script made
// some of its directories read-only.
func removeTree(dir string) error {
	if os.RemoveAll(dir) == nil {
		return nil
	}
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(p, 0o700)
		}
		return nil
	})
	return os.RemoveAll(dir)
}

// Upload implements sdk.Executor.
func (e *Executor) Upload(ctx context.Context, h sdk.Handle, dir string, r io.Reader) error {
	st, err := e.state(h)
	if err != nil {
		return err
	}
	target, err := archive.Join(st.BuildDir, dir)
	if err != nil {
		return fmt.Errorf("upload to job %q: %w", h.JobID, err)
	}
	if err := archive.Extract(ctx, r, target); err != nil {
		return fmt.Errorf("upload to job %q: %w", h.JobID, err)
	}
	return nil
}

// Download implements sdk.Executor.
func (e *Executor) Download(ctx context.Context, h sdk.Handle, paths []string, w io.Writer) error {
	st, err := e.state(h)
	if err != nil {
		return err
	}
	if err := archive.Write(ctx, w, st.BuildDir, paths); err != nil {
		return fmt.Errorf("download from job %q: %w", h.JobID, err)
	}
	return nil
}
