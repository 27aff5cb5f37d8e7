package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/berthci/berth/host/job"
	"github.com/berthci/berth/plugins"
)

// execOptions are berth exec's own flags.
type execOptions struct {
	dir          string
	file         string
	executor     string
	pluginDir    string
	config       string
	logLevel     string
	grace        time.Duration
	concurrency  int
	noColor      bool
	pluginSHA    string
	list         bool
	jsonOut      bool
	stages       execFlagList
	needs        bool
	manual       execFlagList
	vars         execFlagList
	envFile      string
	inPlace      bool
	verbose      bool
	cacheDir     string
	artifactsDir string
}

// execFlagList is a flag that may be given several times; each value may
// also hold several items separated by commas when split is set.
type execFlagList struct {
	items []string
	split bool
}

func (s *execFlagList) String() string { return strings.Join(s.items, ",") }
func (s *execFlagList) Set(v string) error {
	if s.split {
		for _, item := range strings.Split(v, ",") {
			if item = strings.TrimSpace(item); item != "" {
				s.items = append(s.items, item)
			}
		}
		return nil
	}
	s.items = append(s.items, v)
	return nil
}

func (o *execOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&o.dir, "C", ".", "run in this folder (where .gitlab-ci.yml is)")
	fs.StringVar(&o.file, "file", ".gitlab-ci.yml", "the pipeline file, relative to -C")
	fs.StringVar(&o.executor, "executor", "shell", "the executor that runs the jobs")
	fs.StringVar(&o.pluginDir, "plugin-dir", "", "look for executor plugins in this folder first")
	fs.StringVar(&o.config, "config", "", "a config.toml whose [runners.<executor>] table holds the executor's settings")
	fs.StringVar(&o.logLevel, "log-level", "warn", "log level: debug, info, warn, error")
	fs.DurationVar(&o.grace, "grace", job.DefaultGracePeriod, "how long a stopped script gets between SIGTERM and SIGKILL")
	fs.IntVar(&o.concurrency, "concurrency", runtime.NumCPU(), "jobs that run at the same time")
	fs.BoolVar(&o.noColor, "no-color", false, "no ANSI colors in berth's own output")
	fs.StringVar(&o.pluginSHA, "plugin-sha256", "", "refuse to start the executor plugin unless its file has this sha256")
	fs.BoolVar(&o.list, "list", false, "list the jobs (stage, needs, what rules make of them) and run nothing")
	fs.BoolVar(&o.jsonOut, "json", false, "print one JSON object per line for each event, for tools")
	o.stages.split = true
	fs.Var(&o.stages, "stage", "run only the jobs of this stage (repeat or separate with commas)")
	fs.BoolVar(&o.needs, "needs", false, "with JOB names: also run what they need, transitively")
	o.manual.split = true
	fs.Var(&o.manual, "manual", "run this manual job as if started by hand (repeat or separate with commas)")
	fs.Var(&o.vars, "var", "KEY=VALUE: a pipeline variable, as if given to a run (repeat)")
	fs.StringVar(&o.envFile, "env-file", "", "a .env-style file of KEY=VALUE lines standing for the project's CI/CD variables")
	fs.BoolVar(&o.inPlace, "in-place", false, "run the jobs in the project folder itself instead of on a copy (shell executor only)")
	fs.BoolVar(&o.verbose, "verbose", false, "show every section of the job logs instead of one line each")
	fs.StringVar(&o.cacheDir, "cache-dir", "", "where caches are kept between runs (default: the user's cache folder)")
	fs.StringVar(&o.artifactsDir, "artifacts-dir", "", "keep the artifacts of this run in this folder (default: a temporary one)")
}

// scanExecutorFlags finds --executor and --plugin-dir before the full
// parse, which needs the executor's settings to know all flags.
func scanExecutorFlags(args []string) (executor, pluginDir string) {
	executor = "shell"
	for i := 0; i < len(args); i++ {
		a := strings.TrimLeft(args[i], "-")
		if args[i] == "--" {
			break
		}
		for _, name := range []string{"executor", "plugin-dir"} {
			val := ""
			switch {
			case a == name && i+1 < len(args) && strings.HasPrefix(args[i], "-"):
				val = args[i+1]
			case strings.HasPrefix(a, name+"=") && strings.HasPrefix(args[i], "-"):
				val = strings.TrimPrefix(a, name+"=")
			default:
				continue
			}
			if name == "executor" {
				executor = val
			} else {
				pluginDir = val
			}
		}
	}
	return executor, pluginDir
}

func execCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	executor, pluginDir := scanExecutorFlags(args)
	bootLog, err := newLogger(stderr, "warn")
	if err != nil {
		return err
	}
	found, err := discover(pluginDir, bootLog)
	if err != nil {
		return err
	}
	p, ok := found[executor]
	if !ok {
		return fmt.Errorf("no executor %q (have: %s; external ones are files named %s<name> in the plugin folders)",
			executor, strings.Join(plugins.Names(found), ", "), plugins.FilePrefix)
	}

	var opts execOptions
	fs := flag.NewFlagSet("berth exec", flag.ContinueOnError)
	fs.SetOutput(stderr)
	opts.register(fs)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: berth exec [flags] [JOB...]\n\nRuns the jobs of a local .gitlab-ci.yml (all of them, or those named) the way GitLab would:\nrules, needs, artifacts and caches included, on a copy of the working tree.\n\nFlags (those starting with --%s- are the %s executor's settings):\n", executor, executor)
		fs.PrintDefaults()
	}
	// The executor's settings become flags: start it to learn them.
	sup := plugins.NewSupervisor(p, nil, plugins.StartOptions{Log: bootLog, SHA256: shaFromArgs(args)})
	defer sup.Close()
	info, err := sup.Info(ctx)
	if err != nil {
		return err
	}
	flagSettings := settingFlags(fs, info)
	jobNames, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	log, err := newLogger(stderr, opts.logLevel)
	if err != nil {
		return err
	}
	settings := map[string]any{}
	if opts.config != "" {
		if settings, err = loadExecutorTable(opts.config, executor); err != nil {
			return err
		}
	}
	for k, v := range flagSettings() {
		settings[k] = v
	}
	if err := sup.Configure(ctx, settings); err != nil {
		return err
	}

	dir, err := filepath.Abs(opts.dir)
	if err != nil {
		return err
	}
	return runLocal(ctx, &opts, dir, jobNames, sup, info, log, stdout, stderr)
}

func shaFromArgs(args []string) string {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--plugin-sha256="); ok {
			return v
		}
		if (a == "--plugin-sha256" || a == "-plugin-sha256") && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}
