package sdk

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
)

// ShutdownTimeout bounds how long a plugin that lost its host spends
// stopping running steps and cleaning up prepared jobs before it exits.
const ShutdownTimeout = 30 * time.Second

// Serve runs e as a berth executor plugin. It is the whole of a custom
// executor's main function and does not return.
//
// Serve makes slog's default logger write to stderr in the form the host
// reads, so executors log with slog and their lines appear in berth's log
// tagged with the plugin's name.
//
// A plugin never outlives its host: when the host process goes away (even
// SIGKILLed), or on SIGTERM or SIGINT, Serve cancels every running step,
// cleans up every job still prepared, and exits.
func Serve(e Executor) {
	// When the host dies, the plugin's stderr is a pipe nobody reads: a log
	// line would raise SIGPIPE and kill the plugin before it stopped its
	// jobs. Ignored, the write just fails.
	signal.Ignore(syscall.SIGPIPE)
	slog.SetDefault(slog.New(NewPluginLogHandler(os.Stderr, slog.LevelDebug)))
	t := newTracker(e)
	go t.watchHost(os.Getppid())
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig:  Handshake(),
		VersionedPlugins: PluginSets(t),
		TLSProvider:      pluginTLS,
		GRPCServer: func(opts []grpc.ServerOption) *grpc.Server {
			return grpc.NewServer(append(opts, GRPCServerOptions()...)...)
		},
	})
	// plugin.Serve returns when the host closed the connection.
	t.shutdown("the host closed the connection")
}

// NewPluginLogHandler returns a slog handler writing JSON lines in the
// shape go-plugin's host parses (@level, @message, @timestamp).
func NewPluginLogHandler(w io.Writer, level slog.Level) slog.Handler {
	return slog.NewJSONHandler(w, &slog.HandlerOptions{
		Level: level,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) > 0 {
				return a
			}
			switch a.Key {
			case slog.LevelKey:
				return slog.String("@level", levelName(a.Value.Any().(slog.Level)))
			case slog.MessageKey:
				return slog.Attr{Key: "@message", Value: a.Value}
			case slog.TimeKey:
				return slog.Attr{} // the host stamps the line itself
			}
			return a
		},
	})
}

func levelName(l slog.Level) string {
	switch {
	case l >= slog.LevelError:
		return "error"
	case l >= slog.LevelWarn:
		return "warn"
	case l >= slog.LevelInfo:
		return "info"
	default:
		return "debug"
	}
}

// tracker wraps the executor served: it remembers prepared handles and
// running steps so that a plugin losing its host can stop and clean them.
type tracker struct {
	Executor
	mu       sync.Mutex
	handles  map[string]Handle
	runs     map[*context.CancelFunc]struct{}
	draining bool
	once     sync.Once
}

func newTracker(e Executor) *tracker {
	return &tracker{Executor: e, handles: map[string]Handle{}, runs: map[*context.CancelFunc]struct{}{}}
}

func (t *tracker) Prepare(ctx context.Context, job Job) (Handle, error) {
	t.mu.Lock()
	if t.draining {
		t.mu.Unlock()
		return Handle{}, fmt.Errorf("the plugin is shutting down")
	}
	t.handles[job.ID] = Handle{JobID: job.ID}
	t.mu.Unlock()
	h, err := t.Executor.Prepare(ctx, job)
	if err == nil {
		t.mu.Lock()
		t.handles[job.ID] = h
		t.mu.Unlock()
	}
	return h, err
}

func (t *tracker) Cleanup(ctx context.Context, h Handle) error {
	err := t.Executor.Cleanup(ctx, h)
	if err == nil {
		t.mu.Lock()
		delete(t.handles, h.JobID)
		t.mu.Unlock()
	}
	return err
}

func (t *tracker) Run(ctx context.Context, h Handle, step Step, out Output) (int, error) {
	ctx, done, err := t.begin(ctx)
	if err != nil {
		return -1, err
	}
	defer done()
	return t.Executor.Run(ctx, h, step, out)
}

// batch offers the executor's RunSteps when it is a BatchRunner; the
// server checks for it with a type assertion on the tracker. Batch runs
// are tracked like Run calls, so a shutdown stops them too.
func (t *tracker) batch() (BatchRunner, bool) {
	br, ok := t.Executor.(BatchRunner)
	if !ok {
		return nil, false
	}
	return trackedBatch{t: t, br: br}, true
}

type trackedBatch struct {
	t  *tracker
	br BatchRunner
}

func (b trackedBatch) RunSteps(ctx context.Context, h Handle, steps []Step, out StepOutput) ([]StepResult, error) {
	ctx, done, err := b.t.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	return b.br.RunSteps(ctx, h, steps, out)
}

// begin registers a running call so that shutdown can cancel it.
func (t *tracker) begin(ctx context.Context) (context.Context, func(), error) {
	ctx, cancel := context.WithCancel(ctx)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.draining {
		cancel()
		return nil, nil, fmt.Errorf("the plugin is shutting down")
	}
	t.runs[&cancel] = struct{}{}
	return ctx, func() {
		t.mu.Lock()
		delete(t.runs, &cancel)
		t.mu.Unlock()
		cancel()
	}, nil
}

// watchHost shuts the plugin down when its parent changes (the host died
// and the plugin was re-parented) or on SIGTERM/SIGINT. Linux's parent-death
// signal set by the host covers most cases; this covers the rest.
func (t *tracker) watchHost(ppid int) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case s := <-sigs:
			t.shutdown("received " + s.String())
		case <-tick.C:
			if os.Getppid() != ppid {
				t.shutdown("the host process is gone")
			}
		}
	}
}

// shutdown stops running steps, cleans up prepared jobs and exits.
func (t *tracker) shutdown(why string) {
	t.once.Do(func() {
		t.mu.Lock()
		running, prepared := len(t.runs), len(t.handles)
		t.mu.Unlock()
		level := slog.LevelDebug
		if running > 0 || prepared > 0 {
			level = slog.LevelWarn // jobs were still under way: say so
		}
		slog.Log(context.Background(), level, "executor plugin shutting down: "+why, "running_steps", running, "prepared_jobs", prepared)
		go func() {
			time.Sleep(ShutdownTimeout)
			os.Exit(3)
		}()
		t.mu.Lock()
		t.draining = true
		for c := range t.runs {
			(*c)()
		}
		t.mu.Unlock()
		for {
			t.mu.Lock()
			n := len(t.runs)
			t.mu.Unlock()
			if n == 0 {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.mu.Lock()
		handles := make([]Handle, 0, len(t.handles))
		for _, h := range t.handles {
			handles = append(handles, h)
		}
		t.mu.Unlock()
		for _, h := range handles {
			ctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout/2)
			if err := t.Executor.Cleanup(ctx, h); err != nil {
				slog.Error("cleanup during shutdown failed", "job", h.JobID, "error", err)
			}
			cancel()
		}
		os.Exit(0)
	})
}
