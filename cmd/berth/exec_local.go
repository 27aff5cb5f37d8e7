package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/berthci/berth/host/job"
	"github.com/berthci/berth/host/localrun"
	"github.com/berthci/berth/host/pipeline"
	"github.com/berthci/berth/plugins"
	"github.com/berthci/berth/sdk"
)

// runLocal loads the pipeline, plans it and runs it (or lists it).
func runLocal(ctx context.Context, opts *execOptions, dir string, names []string, sup *plugins.Supervisor, info sdk.Info, log *slog.Logger, stdout, stderr io.Writer) error {
	path := filepath.Join(dir, opts.file)
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("reading the pipeline: %w", err)
	}
	pl, err := pipeline.ParseFS(os.DirFS(dir), path, data)
	if err != nil {
		return err
	}
	ui := newExecUI(stdout, opts)
	defer ui.Close()
	for _, w := range pl.Warnings {
		ui.Warning(w.String())
	}

	proj := &localrun.Project{Dir: dir}
	if g, err := localrun.ReadGit(ctx, dir); err == nil {
		proj.Git = g
	} else if errors.Is(err, localrun.ErrNoGit) {
		ui.Warning(fmt.Sprintf("%s: %v; CI_COMMIT_* variables are placeholders and rules:changes always match", dir, err))
	} else {
		return err
	}
	now := time.Now()
	cfg := localrun.Config{
		Pipeline:   pl,
		Project:    proj,
		Predefined: localrun.Predefined(proj.Git, dir, now.Unix(), now),
		Selection:  localrun.Selection{Jobs: names, Needs: opts.needs, Stages: opts.stages.items, Manual: opts.manual.items},
	}
	for _, a := range opts.vars.items {
		v, err := localrun.ParseAssignment(a)
		if err != nil {
			return fmt.Errorf("--var: %w", err)
		}
		cfg.PipelineVariables = append(cfg.PipelineVariables, v)
	}
	if opts.envFile != "" {
		f, err := os.Open(opts.envFile)
		if err != nil {
			return fmt.Errorf("--env-file: %w", err)
		}
		vars, err := localrun.ParseEnvFile(opts.envFile, f)
		f.Close()
		if err != nil {
			return fmt.Errorf("--env-file: %w", err)
		}
		cfg.ProjectVariables = vars
	}
	plan, err := localrun.NewPlan(ctx, cfg)
	if err != nil {
		return err
	}
	for _, w := range plan.Warnings {
		ui.Warning(w)
	}
	if opts.list {
		return ui.List(plan)
	}
	if !plan.Runs {
		ui.Warning("workflow:rules: " + plan.Reason + ": GitLab would not create this pipeline, so nothing runs")
		return nil
	}
	warnIgnoredImages(ui, plan, info)
	selected := 0
	for _, pj := range plan.Jobs {
		if pj.Selected {
			selected++
		}
	}
	ui.SetJobs(selected)

	cacheDir := opts.cacheDir
	if cacheDir == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			base = os.TempDir()
		}
		sum := sha256.Sum256([]byte(dir))
		cacheDir = filepath.Join(base, "berth", "cache", filepath.Base(dir)+"-"+hex.EncodeToString(sum[:6]))
	}

	// First SIGINT/SIGTERM: stop the jobs gracefully (after_script runs).
	// Second: abort them. Either way the environments are cleaned up.
	abortCtx, abort := context.WithCancel(ctx)
	defer abort()
	cancelJobs := make(chan struct{})
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		select {
		case s := <-sigs:
			ui.Warning("berth: " + s.String() + ": stopping the jobs (again to abort)")
			close(cancelJobs)
		case <-abortCtx.Done():
			return
		}
		select {
		case <-sigs:
			abort()
		case <-abortCtx.Done():
		}
	}()

	runner := &job.Runner{Executor: sup, Info: info, GracePeriod: opts.grace, Version: version, Log: log}
	start := time.Now()
	results, err := plan.Run(abortCtx, localrun.Options{
		Runner:       runner,
		Executor:     info,
		Concurrency:  max(1, opts.concurrency),
		InPlace:      opts.inPlace,
		CacheDir:     cacheDir,
		ArtifactsDir: opts.artifactsDir,
		Cancel:       cancelJobs,
		UI:           ui,
		Log:          log,
		RunID:        strconv.FormatInt(time.Now().UnixNano(), 36),
	})
	if err != nil {
		return err
	}
	failed := slices.ContainsFunc(results, localrun.Result.Failed)
	ui.Summary(results, time.Since(start))
	select {
	case <-cancelJobs:
		return exitError{code: 130} // stopped by the user
	default:
	}
	if failed {
		return exitError{code: 1}
	}
	return nil
}

// warnIgnoredImages says once which jobs ask for an image or services the
// executor cannot give them.
func warnIgnoredImages(ui *execUI, plan *localrun.Plan, info sdk.Info) {
	var images, services []string
	for _, pj := range plan.Jobs {
		if !pj.Selected {
			continue
		}
		if pj.Job.Image.Name != "" && !info.Capabilities.Image {
			images = append(images, pj.Job.Name)
		}
		if len(pj.Job.Services) > 0 && !info.Capabilities.Services {
			services = append(services, pj.Job.Name)
		}
	}
	if len(images) > 0 {
		ui.Warning(fmt.Sprintf("the %s executor runs no images: image: is ignored for %s (try --executor docker)", info.Name, strings.Join(images, ", ")))
	}
	if len(services) > 0 {
		ui.Warning(fmt.Sprintf("the %s executor starts no services: services: are ignored for %s (try --executor docker)", info.Name, strings.Join(services, ", ")))
	}
}
