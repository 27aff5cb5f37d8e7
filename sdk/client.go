package sdk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/berthci/berth/sdk/proto/berth/executor/v1"
)

// StopSlack is how long past a step's grace period (or timeout plus grace
// period) the host waits for the plugin to report that the step ended
// before it gives up on the plugin and reports a system failure.
const StopSlack = 10 * time.Second

// Client is the host's side of the protocol. It implements Executor and
// BatchRunner over a gRPC connection to a plugin, and checks what the
// plugin answers: a plugin that lies about its steps or stops answering
// fails the call with an error saying so.
type Client struct {
	c pb.ExecutorClient
	// StopSlack overrides the package's StopSlack when not zero.
	StopSlack time.Duration
}

// NewClient returns a Client on a gRPC connection to a plugin.
func NewClient(cc grpc.ClientConnInterface) *Client {
	return &Client{c: pb.NewExecutorClient(cc)}
}

// fromStatus turns a gRPC status back into an error with the executor's
// message.
func fromStatus(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch st.Code() {
	case codes.NotFound:
		return fmt.Errorf("%s: %w", st.Message(), ErrNotFound)
	case codes.Unavailable:
		return &TransportError{Err: err}
	case codes.Canceled:
		return fmt.Errorf("%s: %w", st.Message(), context.Canceled)
	case codes.DeadlineExceeded:
		return fmt.Errorf("%s: %w", st.Message(), context.DeadlineExceeded)
	}
	return errors.New(st.Message())
}

// TransportError is a failure to reach the plugin at all: its process
// died or its connection broke.
type TransportError struct{ Err error }

func (e *TransportError) Error() string {
	return "connection to the executor plugin lost: " + e.Err.Error()
}
func (e *TransportError) Unwrap() error { return e.Err }

// Info implements Executor.
func (c *Client) Info(ctx context.Context) (Info, error) {
	r, err := c.c.Info(ctx, &pb.InfoRequest{})
	if err != nil {
		return Info{}, fromStatus(err)
	}
	return infoFromProto(r), nil
}

// Configure implements Executor.
func (c *Client) Configure(ctx context.Context, settings map[string]any) error {
	b, err := json.Marshal(settings)
	if err != nil {
		return fmt.Errorf("encoding settings: %w", err)
	}
	_, err = c.c.Configure(ctx, &pb.ConfigureRequest{SettingsJson: b})
	return fromStatus(err)
}

// Prepare implements Executor.
func (c *Client) Prepare(ctx context.Context, job Job) (Handle, error) {
	r, err := c.c.Prepare(ctx, &pb.PrepareRequest{Job: jobToProto(job)})
	if err != nil {
		return Handle{}, fromStatus(err)
	}
	h := handleFromProto(r.Handle)
	if h.JobID != job.ID {
		return h, fmt.Errorf("the plugin prepared job %q when asked for job %q", h.JobID, job.ID)
	}
	return h, nil
}

// Cleanup implements Executor.
func (c *Client) Cleanup(ctx context.Context, h Handle) error {
	_, err := c.c.Cleanup(ctx, &pb.CleanupRequest{Handle: handleToProto(h)})
	return fromStatus(err)
}

// Run implements Executor: it runs one step. Cancelling ctx asks the
// plugin to stop the step (SIGTERM, then SIGKILL after the grace period)
// and waits for it to say the step ended.
func (c *Client) Run(ctx context.Context, h Handle, step Step, out Output) (int, error) {
	res, err := c.RunSteps(ctx, h, []Step{step}, func(int) Output { return out })
	if err != nil {
		return -1, err
	}
	r := res[0]
	if r.Err != nil {
		return r.ExitCode, r.Err
	}
	if r.Canceled {
		return r.ExitCode, fmt.Errorf("step %q: %w", step.Name, context.Canceled)
	}
	if r.TimedOut {
		return r.ExitCode, fmt.Errorf("step %q: %w", step.Name, context.DeadlineExceeded)
	}
	return r.ExitCode, nil
}

// RunSteps implements BatchRunner. It returns an error only when the run
// could not start; how each step ended, system failures included, is in
// its StepResult. Cancelling ctx asks the plugin to stop the running step;
// Always steps after it still run.
func (c *Client) RunSteps(ctx context.Context, h Handle, steps []Step, out StepOutput) ([]StepResult, error) {
	streamCtx, hardStop := context.WithCancelCause(context.WithoutCancel(ctx))
	defer hardStop(nil)
	stream, err := c.c.Run(streamCtx)
	if err != nil {
		return nil, fromStatus(err)
	}
	start := &pb.RunStart{Handle: handleToProto(h)}
	for _, s := range steps {
		start.Steps = append(start.Steps, stepToProto(s))
	}
	if err := stream.Send(&pb.RunRequest{Msg: &pb.RunRequest_Start{Start: start}}); err != nil {
		_, rerr := stream.Recv()
		return nil, fromStatus(errors.Join(err, rerr))
	}

	slack := c.StopSlack
	if slack == 0 {
		slack = StopSlack
	}
	w := newWatchdog(steps, slack, hardStop)
	defer w.stop()
	go func() {
		select {
		case <-ctx.Done():
			w.canceled()
			_ = stream.Send(&pb.RunRequest{Msg: &pb.RunRequest_Cancel{Cancel: &pb.RunCancel{}}})
		case <-streamCtx.Done():
		}
	}()

	results := make([]StepResult, len(steps))
	seen := make([]bool, len(steps))
	next := 0 // the step whose exit comes next
	var protoErr error
	for protoErr == nil {
		ev, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			if cause := context.Cause(streamCtx); cause != nil && streamCtx.Err() != nil {
				err = cause
			} else {
				err = fromStatus(err)
			}
			for i := next; i < len(steps); i++ {
				results[i] = StepResult{ExitCode: -1, Err: err}
				seen[i] = true
			}
			return results, nil
		}
		switch e := ev.Event.(type) {
		case *pb.RunEvent_Output:
			i := int(e.Output.Step)
			if i != next || i >= len(steps) {
				protoErr = fmt.Errorf("the plugin sent output for step %d while step %d runs", i, next)
				break
			}
			o := out(i)
			dst := o.Stdout
			if e.Output.Stream == pb.OutputChunk_STDERR {
				dst = o.Stderr
			}
			if _, err := dst.Write(e.Output.Data); err != nil {
				protoErr = fmt.Errorf("writing step %q output: %w", steps[i].Name, err)
			}
		case *pb.RunEvent_Exit:
			x := e.Exit
			i := int(x.Step)
			if i != next || i >= len(steps) {
				protoErr = fmt.Errorf("the plugin reported the end of step %d while step %d runs", i, next)
				break
			}
			r := StepResult{ExitCode: int(x.ExitCode), Skipped: x.Skipped, Canceled: x.Canceled, TimedOut: x.TimedOut}
			if x.SystemError != "" {
				r.Err = errors.New(x.SystemError)
			}
			results[i], seen[i] = r, true
			next++
			w.stepDone(next)
		default:
			protoErr = fmt.Errorf("the plugin sent an event this host does not know (%T)", ev.Event)
		}
	}
	if protoErr != nil {
		hardStop(protoErr)
	}
	for i := range steps {
		if !seen[i] {
			err := protoErr
			if err == nil {
				err = fmt.Errorf("the plugin ended the run without saying how step %q ended", steps[i].Name)
			}
			results[i] = StepResult{ExitCode: -1, Err: err}
		}
	}
	return results, nil
}

// watchdog stops a run whose plugin does not end a step in time: a step
// with a timeout gets timeout + grace + StopSlack, a cancelled step grace +
// StopSlack.
type watchdog struct {
	slack    time.Duration
	mu       sync.Mutex
	steps    []Step
	current  int
	timer    *time.Timer
	stopRun  context.CancelCauseFunc
	isCancel bool
}

func newWatchdog(steps []Step, slack time.Duration, stopRun context.CancelCauseFunc) *watchdog {
	w := &watchdog{steps: steps, slack: slack, stopRun: stopRun}
	w.mu.Lock()
	w.arm(0)
	w.mu.Unlock()
	return w
}

// arm sets the timer for step i; the caller holds w.mu.
func (w *watchdog) arm(i int) {
	if w.timer != nil {
		w.timer.Stop()
		w.timer = nil
	}
	w.current = i
	if i >= len(w.steps) {
		return
	}
	s := w.steps[i]
	var d time.Duration
	switch {
	case w.isCancel && s.When != Always:
		d = s.GracePeriod + w.slack
	case s.Timeout > 0:
		d = s.Timeout + s.GracePeriod + w.slack
	default:
		return
	}
	w.timer = time.AfterFunc(d, func() {
		w.stopRun(fmt.Errorf("the plugin did not end step %q within %s", s.Name, d))
	})
}

func (w *watchdog) stepDone(next int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.arm(next)
}

func (w *watchdog) canceled() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.isCancel = true
	w.arm(w.current)
}

func (w *watchdog) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.timer != nil {
		w.timer.Stop()
	}
}

// Upload implements Executor.
func (c *Client) Upload(ctx context.Context, h Handle, dir string, archive io.Reader) error {
	stream, err := c.c.Upload(ctx)
	if err != nil {
		return fromStatus(err)
	}
	if err := stream.Send(&pb.UploadRequest{Header: &pb.UploadHeader{Handle: handleToProto(h), Dir: dir}}); err != nil {
		_, rerr := stream.CloseAndRecv()
		return fromStatus(errors.Join(err, rerr))
	}
	buf := make([]byte, MaxChunk)
	for {
		n, rerr := archive.Read(buf)
		if n > 0 {
			if err := stream.Send(&pb.UploadRequest{Data: buf[:n]}); err != nil {
				// The plugin ended the call early; its status says why.
				_, err = stream.CloseAndRecv()
				return fromStatus(err)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("reading the archive to upload: %w", rerr)
		}
	}
	_, err = stream.CloseAndRecv()
	return fromStatus(err)
}

// Download implements Executor.
func (c *Client) Download(ctx context.Context, h Handle, paths []string, archive io.Writer) error {
	stream, err := c.c.Download(ctx, &pb.DownloadRequest{Handle: handleToProto(h), Paths: paths})
	if err != nil {
		return fromStatus(err)
	}
	for {
		chunk, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fromStatus(err)
		}
		if _, err := archive.Write(chunk.Data); err != nil {
			return fmt.Errorf("writing the downloaded archive: %w", err)
		}
	}
}

var (
	_ Executor    = (*Client)(nil)
	_ BatchRunner = (*Client)(nil)
)
