package sshexec

import (
	"context"
	"fmt"
	"io"

	"github.com/berthci/berth/sdk"
)

// Jobs is what the SSH executors share of sdk.Executor: Run, Upload and
// Download of a prepared job, each on the job's one connection (kept in
// Conns, dialled again after a plugin crash or a lost connection) in the
// job's build directory. An executor embeds Jobs, so that these are its
// methods, sets Locate, and keeps Prepare and Cleanup (where the job's
// host comes from and how it goes away) to itself.
type Jobs struct {
	// Conns keeps the connection of each job.
	Conns JobConns
	// Locate says where the prepared job of h runs, from h's state and the
	// executor's settings. Its errors are returned as they are.
	Locate func(h sdk.Handle) (Job, error)
}

// Job is where a prepared job runs, as Jobs.Locate says it.
type Job struct {
	// Dial is how to reach the job's host.
	Dial Config
	// BuildDir is the job's build directory there, an absolute path.
	BuildDir string
	// Where names the job's host for the user in failures, after the job
	// (e.g. `VM "x"`); empty names none.
	Where string
	// Explain adds what the executor knows to a failure of the job's
	// connection, of a step (unless it was cancelled) or of a file
	// transfer: what to do about a refused host key, that the VM is gone.
	// Nil adds nothing.
	Explain func(error) error
}

// describe names the job jobID in failures: job "ID" (Where).
func (j Job) describe(jobID string) string {
	if j.Where == "" {
		return fmt.Sprintf("job %q", jobID)
	}
	return fmt.Sprintf("job %q (%s)", jobID, j.Where)
}

func (j Job) explain(err error) error {
	if j.Explain == nil {
		return err
	}
	return j.Explain(err)
}

// connect locates the job of h and returns its connection.
func (js *Jobs) connect(ctx context.Context, h sdk.Handle) (Job, *Client, error) {
	j, err := js.Locate(h)
	if err != nil {
		return j, nil, err
	}
	c, err := js.Conns.Get(ctx, h.JobID, j.Dial)
	if err != nil {
		return j, nil, j.explain(fmt.Errorf("%s: %w", j.describe(h.JobID), err))
	}
	return j, c, nil
}

// Run implements sdk.Executor: the step runs on a session of its own (see
// Client.Run).
func (js *Jobs) Run(ctx context.Context, h sdk.Handle, step sdk.Step, out sdk.Output) (int, error) {
	j, c, err := js.connect(ctx, h)
	if err != nil {
		return -1, err
	}
	code, err := c.Run(ctx, Stage{
		Dir: j.BuildDir, Script: step.Script, Shell: step.Shell, GracePeriod: step.GracePeriod,
		Stdout: out.Stdout, Stderr: out.Stderr,
	})
	if err != nil {
		err = fmt.Errorf("step %q of %s: %w", step.Name, j.describe(h.JobID), err)
		if ctx.Err() == nil {
			err = j.explain(err)
		}
		return code, err
	}
	return code, nil
}

// Upload implements sdk.Executor (see Client.Upload).
func (js *Jobs) Upload(ctx context.Context, h sdk.Handle, dir string, r io.Reader) error {
	j, c, err := js.connect(ctx, h)
	if err != nil {
		return err
	}
	if err := c.Upload(ctx, j.BuildDir, dir, r); err != nil {
		return j.explain(fmt.Errorf("%s: %w", j.describe(h.JobID), err))
	}
	return nil
}

// Download implements sdk.Executor (see Client.Download).
func (js *Jobs) Download(ctx context.Context, h sdk.Handle, paths []string, w io.Writer) error {
	j, c, err := js.connect(ctx, h)
	if err != nil {
		return err
	}
	if err := c.Download(ctx, j.BuildDir, paths, w); err != nil {
		return j.explain(fmt.Errorf("%s: %w", j.describe(h.JobID), err))
	}
	return nil
}
