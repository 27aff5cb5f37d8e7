package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/berthci/berth/host/job"
	"github.com/berthci/berth/host/trace"
	"github.com/berthci/berth/plugins"
	"github.com/berthci/berth/sdk"
)

// profileAll runs each benchmark again, without its baseline, with CPU
// profiles of the host (this process) and of the plugin (bench/profplugin,
// the same shell executor behind the same sdk.Serve). It writes
// DIR/host-X.pprof and DIR/plugin-X-<pid>-<n>.pprof for X in a, b, c, d.
// Read them with `go tool pprof -top DIR/host-a.pprof` (several plugin
// profiles of one benchmark can be given at once).
func (e *env) profileAll(ctx context.Context) error {
	dir, err := filepath.Abs(e.cfg.profile)
	if err != nil {
		return fmt.Errorf("profile folder: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("profile folder: %w", err)
	}
	bin := filepath.Join(e.tmp, "profplugin")
	if err := goBuild(bin, "./bench/profplugin"); err != nil {
		return err
	}
	profPlugin := func(phase string, args ...string) plugins.Plugin {
		return plugins.Plugin{Name: "shell", Path: bin, Args: append([]string{filepath.Join(dir, "plugin-"+phase)}, args...)}
	}

	// (a), (b) and (c) share one plugin process, profiled in turn.
	sup := plugins.NewSupervisor(profPlugin("abc"), map[string]any{"builds_dir": filepath.Join(e.tmp, "prof-builds")}, plugins.StartOptions{Log: e.log})
	defer sup.Close()
	inst, err := sup.Instance(ctx)
	if err != nil {
		return fmt.Errorf("profiling: starting the plugin: %w", err)
	}
	ex := inst.Executor()
	phases := []struct {
		name string
		run  func() error
	}{
		{"a", func() error {
			for range e.cfg.rpcN * 3 {
				if _, err := ex.Info(ctx); err != nil {
					return err
				}
			}
			return nil
		}},
		{"b", func() error {
			size := int64(e.cfg.tputMiB) << 20
			h, err := sup.Prepare(ctx, sdk.Job{ID: "prof-throughput", Shell: "bash"})
			if err != nil {
				return err
			}
			defer sup.Cleanup(context.WithoutCancel(ctx), h)
			step := sdk.Step{Name: "step_script", Script: fmt.Sprintf("head -c %d /dev/zero\n", size), Shell: "bash", GracePeriod: time.Second}
			for range 5 {
				tr := trace.New(io.Discard, trace.Options{Secrets: []string{benchSecret1, benchSecret2}, Limit: -1})
				if _, err := sup.Run(ctx, h, step, sdk.Output{Stdout: tr, Stderr: tr}); err != nil {
					return err
				}
				tr.Close()
			}
			return nil
		}},
		{"c", func() error {
			runner := &job.Runner{Executor: sup, Info: inst.Info(), Version: "bench", Log: e.log}
			for i := range e.cfg.jobN * 2 {
				res := runner.Run(ctx, job.Job{ID: fmt.Sprintf("prof-job-%d", i), Name: "trivial", Script: []string{"true"}}, io.Discard)
				if res.Status != job.Success {
					return fmt.Errorf("job ended %s: %v", res.Status, res.Err)
				}
			}
			return nil
		}},
	}
	for i, ph := range phases {
		progress("profiling (%s)", ph.name)
		if err := signalProfile(inst.Pid()); err != nil {
			return err
		}
		err := hostProfile(filepath.Join(dir, "host-"+ph.name+".pprof"), ph.run)
		if err == nil {
			err = signalProfile(inst.Pid())
		}
		if err == nil {
			err = waitFile(fmt.Sprintf("%s-%d-%d.pprof", filepath.Join(dir, "plugin-abc"), inst.Pid(), i))
		}
		if err != nil {
			return fmt.Errorf("profiling (%s): %w", ph.name, err)
		}
	}

	// (d): each plugin profiles itself from its start until Start returned.
	progress("profiling (d)")
	return hostProfile(filepath.Join(dir, "host-d.pprof"), func() error {
		for range e.cfg.startN {
			inst, err := plugins.Start(ctx, profPlugin("d", "from-start"), plugins.StartOptions{Log: e.log})
			if err != nil {
				return err
			}
			err = signalProfile(inst.Pid())
			if err == nil {
				err = waitFile(fmt.Sprintf("%s-%d-0.pprof", filepath.Join(dir, "plugin-d"), inst.Pid()))
			}
			inst.Kill()
			if err != nil {
				return err
			}
		}
		return nil
	})
}

func hostProfile(path string, f func() error) error {
	out, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("creating %s: %w", path, err)
	}
	defer out.Close()
	if err := pprof.StartCPUProfile(out); err != nil {
		return fmt.Errorf("starting the CPU profile: %w", err)
	}
	err = f()
	pprof.StopCPUProfile()
	return err
}

func signalProfile(pid int) error {
	if err := syscall.Kill(pid, syscall.SIGUSR1); err != nil {
		return fmt.Errorf("signalling the plugin %d: %w", pid, err)
	}
	return nil
}

// waitFile waits (up to 10 s) until path exists.
func waitFile(path string) error {
	for range 1000 {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("the plugin wrote no profile %s", path)
}
