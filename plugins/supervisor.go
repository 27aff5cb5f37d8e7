package plugins

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/berthci/berth/sdk"
)

// Supervisor keeps one executor plugin running for the host: it starts
// and configures the plugin on first use, notices when it died, and starts
// it again for the next call. Calls that were under way when it died fail
// with an error naming the plugin and how it died. Supervisor implements
// sdk.Executor and sdk.BatchRunner, so the host never sees a dead plugin.
type Supervisor struct {
	plugin   Plugin
	settings map[string]any
	opts     StartOptions

	mu       sync.Mutex
	inst     *Instance
	starts   int
	closed   bool
	lastInfo sdk.Info
}

// NewSupervisor returns a Supervisor for p, configured with settings. With
// nil settings the plugin is only started (Info works); the first other
// call configures it with no settings unless Configure came first.
func NewSupervisor(p Plugin, settings map[string]any, opts StartOptions) *Supervisor {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	return &Supervisor{plugin: p, settings: settings, opts: opts}
}

// Instance returns the running plugin, starting and configuring it when
// none runs.
func (s *Supervisor) Instance(ctx context.Context) (*Instance, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, fmt.Errorf("executor plugin %q: the host is shutting down", s.plugin.Name)
	}
	if s.inst != nil && !s.inst.Exited() {
		return s.inst, nil
	}
	if s.inst != nil {
		s.opts.Log.Warn("executor plugin died; starting it again", "plugin", s.plugin.Name, "how", s.inst.Death())
		s.inst.Kill() // removes its socket folder
		s.inst = nil
	}
	inst, err := Start(ctx, s.plugin, s.opts)
	if err != nil {
		return nil, err
	}
	if s.settings != nil {
		if err := inst.Executor().Configure(ctx, s.settings); err != nil {
			inst.Kill()
			return nil, fmt.Errorf("executor plugin %q refused its settings: %w", s.plugin.Name, err)
		}
	}
	s.inst = inst
	s.starts++
	s.lastInfo = inst.Info()
	return inst, nil
}

// ready returns the running plugin, configured.
func (s *Supervisor) ready(ctx context.Context) (*Instance, error) {
	s.mu.Lock()
	unset := s.settings == nil
	s.mu.Unlock()
	if unset {
		if err := s.Configure(ctx, map[string]any{}); err != nil {
			return nil, err
		}
	}
	return s.Instance(ctx)
}

// Starts counts how often the plugin was started.
func (s *Supervisor) Starts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.starts
}

// Close stops the plugin.
func (s *Supervisor) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.inst != nil {
		s.inst.Kill()
		s.inst = nil
	}
}

// explain turns an error of a call to inst into one that names the plugin
// and, when it died, how.
func (s *Supervisor) explain(inst *Instance, op string, err error) error {
	if err == nil {
		return nil
	}
	var te *sdk.TransportError
	if errors.As(err, &te) || inst.Exited() {
		// The connection breaks a moment before the process is reaped.
		for range 40 {
			if inst.Exited() {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if how := inst.Death(); how != "" {
			return &diedError{
				msg: fmt.Sprintf("executor plugin %q (pid %d) died during %s: %s", s.plugin.Name, inst.Pid(), op, how),
				err: err,
			}
		}
	}
	return fmt.Errorf("executor plugin %q: %s: %w", s.plugin.Name, op, err)
}

// Info implements sdk.Executor.
func (s *Supervisor) Info(ctx context.Context) (sdk.Info, error) {
	inst, err := s.Instance(ctx)
	if err != nil {
		return sdk.Info{}, err
	}
	return inst.Info(), nil
}

// Configure implements sdk.Executor: the settings are kept for restarts
// and handed to the running plugin.
func (s *Supervisor) Configure(ctx context.Context, settings map[string]any) error {
	s.mu.Lock()
	s.settings = settings
	inst := s.inst
	s.mu.Unlock()
	if inst == nil || inst.Exited() {
		_, err := s.Instance(ctx)
		return err
	}
	if err := inst.Executor().Configure(ctx, settings); err != nil {
		return fmt.Errorf("executor plugin %q refused its settings: %w", s.plugin.Name, err)
	}
	return nil
}

// Prepare implements sdk.Executor.
func (s *Supervisor) Prepare(ctx context.Context, job sdk.Job) (sdk.Handle, error) {
	inst, err := s.ready(ctx)
	if err != nil {
		return sdk.Handle{}, err
	}
	h, err := inst.Executor().Prepare(ctx, job)
	return h, s.explain(inst, "prepare", err)
}

// Run implements sdk.Executor.
func (s *Supervisor) Run(ctx context.Context, h sdk.Handle, step sdk.Step, out sdk.Output) (int, error) {
	inst, err := s.ready(ctx)
	if err != nil {
		return -1, err
	}
	code, err := inst.Executor().Run(ctx, h, step, out)
	if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		err = s.explain(inst, "step "+step.Name, err)
	}
	return code, err
}

// RunSteps implements sdk.BatchRunner.
func (s *Supervisor) RunSteps(ctx context.Context, h sdk.Handle, steps []sdk.Step, out sdk.StepOutput) ([]sdk.StepResult, error) {
	inst, err := s.ready(ctx)
	if err != nil {
		return nil, err
	}
	res, err := inst.Executor().RunSteps(ctx, h, steps, out)
	if err != nil {
		return nil, s.explain(inst, "run", err)
	}
	for i := range res {
		if res[i].Err != nil {
			res[i].Err = s.explain(inst, "step "+steps[i].Name, res[i].Err)
		}
	}
	return res, nil
}

// Upload implements sdk.Executor.
func (s *Supervisor) Upload(ctx context.Context, h sdk.Handle, dir string, archive io.Reader) error {
	inst, err := s.ready(ctx)
	if err != nil {
		return err
	}
	return s.explain(inst, "upload", inst.Executor().Upload(ctx, h, dir, archive))
}

// Download implements sdk.Executor.
func (s *Supervisor) Download(ctx context.Context, h sdk.Handle, paths []string, archive io.Writer) error {
	inst, err := s.ready(ctx)
	if err != nil {
		return err
	}
	return s.explain(inst, "download", inst.Executor().Download(ctx, h, paths, archive))
}

// Cleanup implements sdk.Executor. A plugin that died is started again
// first: cleaning up must not depend on the process that prepared the job.
func (s *Supervisor) Cleanup(ctx context.Context, h sdk.Handle) error {
	inst, err := s.ready(ctx)
	if err != nil {
		return err
	}
	return s.explain(inst, "cleanup", inst.Executor().Cleanup(ctx, h))
}

var (
	_ sdk.Executor    = (*Supervisor)(nil)
	_ sdk.BatchRunner = (*Supervisor)(nil)
)

// diedError says a plugin died and how; the transport error it caused is
// kept for errors.Is/As but not repeated in the message.
type diedError struct {
	msg string
	err error
}

func (e *diedError) Error() string { return e.msg }
func (e *diedError) Unwrap() error { return e.err }
