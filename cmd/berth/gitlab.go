package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/berthci/berth/host/config"
	"github.com/berthci/berth/host/gitlab"
	"github.com/berthci/berth/host/job"
	"github.com/berthci/berth/host/runner"
	"github.com/berthci/berth/plugins"
	"github.com/berthci/berth/sdk"
)

// userAgent is what berth calls itself towards GitLab.
func userAgent() string {
	return fmt.Sprintf("berth %s (%s; %s/%s)", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// defaultConfigPath is where gitlab-runner's habits look for config.toml:
// $CONFIG_FILE, else /etc/berth/config.toml for root and
// ~/.berth/config.toml for others.
func defaultConfigPath() string {
	if p := os.Getenv("CONFIG_FILE"); p != "" {
		return p
	}
	if os.Geteuid() == 0 {
		return "/etc/berth/config.toml"
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "config.toml"
	}
	return filepath.Join(home, ".berth", "config.toml")
}

// configFlag registers -c and --config (same value).
func configFlag(fs *flag.FlagSet) *string {
	p := new(string)
	def := defaultConfigPath()
	fs.StringVar(p, "config", def, "config file")
	fs.StringVar(p, "c", def, "config file (short for --config)")
	return p
}

// levelVar maps gitlab-runner's log levels to slog's.
func setLevel(v *slog.LevelVar, level string) error {
	switch level {
	case "", "info":
		v.Set(slog.LevelInfo)
	case "debug":
		v.Set(slog.LevelDebug)
	case "warn", "warning":
		v.Set(slog.LevelWarn)
	case "error", "fatal", "panic":
		v.Set(slog.LevelError)
	default:
		return fmt.Errorf("log level %q: use debug, info, warn or error", level)
	}
	return nil
}

// runnerLogger is the logger of berth run: text (gitlab-runner's "runner"
// and "text" formats) or JSON.
func runnerLogger(w io.Writer, level *slog.LevelVar, format string) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case "", "runner", "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("log format %q: use runner, text or json", format)
	}
}

// backends gives each runner its executor: a plugin Supervisor per runner,
// configured with the runner's executor table (and builds_dir and shell
// when the executor has such settings).
type backends struct {
	found map[string]plugins.Plugin
	log   *slog.Logger

	mu      sync.Mutex
	byKey   map[string]*backend
	runners map[string]config.Runner
}

type backend struct {
	executor string
	sup      *plugins.Supervisor
	info     sdk.Info
	settings string // JSON of what it was configured with
}

func newBackends(found map[string]plugins.Plugin, log *slog.Logger) *backends {
	return &backends{found: found, log: log, byKey: map[string]*backend{}, runners: map[string]config.Runner{}}
}

func runnerKey(url, token string) string { return url + "\x00" + token }

// executorSettings are the settings the runner's executor gets.
func executorSettings(r config.Runner, info sdk.Info) map[string]any {
	s := maps.Clone(r.ExecutorSettings)
	if s == nil {
		s = map[string]any{}
	}
	has := func(name string) bool {
		return slices.ContainsFunc(info.Config, func(f sdk.ConfigField) bool { return f.Name == name })
	}
	if _, set := s["builds_dir"]; !set && r.BuildsDir != "" && has("builds_dir") {
		s["builds_dir"] = r.BuildsDir
	}
	if _, set := s["shell"]; !set && r.Shell != "" && has("shell") {
		s["shell"] = r.Shell
	}
	return s
}

// configure makes every runner's executor take its settings; on an error
// the executors already changed get their old settings back, and the
// error names the runner.
func (b *backends) configure(ctx context.Context, runners []config.Runner) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	type undo struct {
		be  *backend
		old string
	}
	var undos []undo
	rollback := func() {
		for _, u := range undos {
			var s map[string]any
			_ = json.Unmarshal([]byte(u.old), &s)
			_ = u.be.sup.Configure(ctx, s)
			u.be.settings = u.old
		}
	}
	for _, r := range runners {
		k := runnerKey(r.URL, r.Token)
		be := b.byKey[k]
		if be != nil && be.executor != r.Executor {
			be.sup.Close()
			delete(b.byKey, k)
			be = nil
		}
		if be == nil {
			p, ok := b.found[r.Executor]
			if !ok {
				rollback()
				return fmt.Errorf("runner %q: no executor %q (have: %s)", r.Name, r.Executor, strings.Join(plugins.Names(b.found), ", "))
			}
			opts := plugins.StartOptions{Log: b.log}
			if err := pinStart(p, r.PluginSHA256, &opts); err != nil {
				rollback()
				return fmt.Errorf("runner %q: %w", r.Name, err)
			}
			sup := plugins.NewSupervisor(p, nil, opts)
			info, err := sup.Info(ctx)
			if err == nil {
				err = checkPins(p, info, r.PluginVersion, r.PluginSHA256)
			}
			if err != nil {
				sup.Close()
				rollback()
				return fmt.Errorf("runner %q: %w", r.Name, err)
			}
			settings := executorSettings(r, info)
			if err := sup.Configure(ctx, settings); err != nil {
				sup.Close()
				rollback()
				return fmt.Errorf("runner %q: %w", r.Name, err)
			}
			js, _ := json.Marshal(settings)
			b.byKey[k] = &backend{executor: r.Executor, sup: sup, info: info, settings: string(js)}
			continue
		}
		settings := executorSettings(r, be.info)
		js, _ := json.Marshal(settings)
		if string(js) == be.settings {
			continue
		}
		if err := be.sup.Configure(ctx, settings); err != nil {
			rollback()
			return fmt.Errorf("runner %q: %w", r.Name, err)
		}
		undos = append(undos, undo{be, be.settings})
		be.settings = string(js)
	}
	// Runners that are gone: their plugin stops once their jobs ended
	// (the supervisor is closed when berth exits).
	b.runners = map[string]config.Runner{}
	for _, r := range runners {
		b.runners[runnerKey(r.URL, r.Token)] = r
	}
	return nil
}

// backend implements runner.Options.Backend.
func (b *backends) backend(_ context.Context, rc runner.RunnerConfig) (runner.Backend, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	k := runnerKey(rc.URL, rc.Token)
	be, ok := b.byKey[k]
	r := b.runners[k]
	if !ok {
		return runner.Backend{}, fmt.Errorf("runner %q has no executor configured", rc.Name)
	}
	jr := &job.Runner{Executor: be.sup, Info: be.info, OutputLimit: r.OutputLimitBytes(), Version: version, Log: b.log}
	return runner.Backend{Jobs: jr, Info: be.info}, nil
}

// restarts counts plugin restarts by executor, for the metrics.
func (b *backends) restarts() map[string]int {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := map[string]int{}
	for _, be := range b.byKey {
		out[be.executor] += max(be.sup.Starts()-1, 0)
	}
	return out
}

func (b *backends) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, be := range b.byKey {
		be.sup.Close()
	}
}

// clients keeps one GitLab client per URL.
type clients struct {
	mu      sync.Mutex
	byURL   map[string]*gitlab.Client
	log     *slog.Logger
	observe func(string, int)
}

func (c *clients) get(url string) (*gitlab.Client, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cl, ok := c.byURL[url]; ok {
		return cl, nil
	}
	cl, err := gitlab.NewClient(url, gitlab.Options{UserAgent: userAgent(), Log: c.log, Observe: c.observe})
	if err != nil {
		return nil, err
	}
	if c.byURL == nil {
		c.byURL = map[string]*gitlab.Client{}
	}
	c.byURL[url] = cl
	return cl, nil
}

// api adapts clients to runner.Options.Client.
func (c *clients) api(url string) (runner.API, error) {
	cl, err := c.get(url)
	if err != nil {
		return nil, err
	}
	return cl, nil
}

// runnerConfig is what the loop needs of a [[runners]] entry.
func runnerConfig(r config.Runner, workDir string) runner.RunnerConfig {
	cache := r.CacheDir
	if cache == "" {
		cache = filepath.Join(workDir, "cache")
	}
	return runner.RunnerConfig{
		Name: r.Name, URL: r.URL, Token: r.Token, Executor: r.Executor, Limit: r.Limit,
		RequestConcurrency: r.RequestConcurrency, CacheDir: cache, Environment: r.Environment,
		PreGetSourcesScript: r.PreGetSourcesScript, PreBuildScript: r.PreBuildScript, PostBuildScript: r.PostBuildScript,
		Shell: r.Shell,
	}
}

// settingsOf turns a config into the loop's settings.
func settingsOf(c *config.Config, workDir string) runner.Settings {
	s := runner.Settings{Concurrent: c.Concurrent, CheckInterval: c.CheckIntervalDuration()}
	for _, r := range c.Runners {
		s.Runners = append(s.Runners, runnerConfig(r, workDir))
	}
	return s
}

// featuresInfo is the info berth sends on register and verify.
func featuresInfo(executor string, info sdk.Info) gitlab.Info {
	shell := ""
	if len(info.Capabilities.Shells) > 0 {
		shell = info.Capabilities.Shells[0]
	}
	return gitlab.Info{Name: "berth", Version: version, Platform: runtime.GOOS, Architecture: runtime.GOARCH,
		Executor: executor, Shell: shell, Features: runner.Features(info, true, true)}
}

// typedSetting converts a flag's text to the type of the executor's
// setting, for config.toml (the plugin checks it either way).
func typedSetting(f sdk.ConfigField, v string) any {
	switch f.Type {
	case sdk.FieldBool:
		if b, err := strconv.ParseBool(v); err == nil {
			return b
		}
	case sdk.FieldInt:
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			return n
		}
	case sdk.FieldFloat:
		if n, err := strconv.ParseFloat(v, 64); err == nil {
			return n
		}
	case sdk.FieldList:
		var out []string
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
		return out
	}
	return v
}

// stringList is a repeatable flag (--env A=1 --env B=2).
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// scanValue finds the value of --name (or -name, --name=v) before flags
// are parsed.
func scanValue(args []string, names ...string) string {
	for i := 0; i < len(args); i++ {
		if args[i] == "--" {
			break
		}
		a := strings.TrimLeft(args[i], "-")
		if a == args[i] {
			continue
		}
		for _, n := range names {
			if a == n && i+1 < len(args) {
				return args[i+1]
			}
			if v, ok := strings.CutPrefix(a, n+"="); ok {
				return v
			}
		}
	}
	return ""
}

// probe is a plugin started to learn its settings.
type probe struct {
	sup  *plugins.Supervisor
	info sdk.Info
	err  error
}

func newProbe(ctx context.Context, p plugins.Plugin, log *slog.Logger) *probe {
	pr := &probe{sup: plugins.NewSupervisor(p, nil, plugins.StartOptions{Log: log})}
	pr.info, pr.err = pr.sup.Info(ctx)
	return pr
}

func (p *probe) close() { p.sup.Close() }

// pinStart makes the plugin's start check a runner's plugin_sha256 pin
// when the plugin was not installed through `berth plugins install` (an
// installed one is checked against its manifest by checkPins).
func pinStart(p plugins.Plugin, sha256Pin string, opts *plugins.StartOptions) error {
	if sha256Pin == "" {
		return nil
	}
	if _, err := plugins.Installed(p); errors.Is(err, fs.ErrNotExist) {
		if p.Builtin {
			return fmt.Errorf("plugin_sha256 pins executor %q, but it is built into berth, not installed: remove the pin or install the plugin", p.Name)
		}
		opts.SHA256 = sha256Pin
	}
	return nil
}

// checkPins refuses a runner whose plugin does not satisfy its
// plugin_version and plugin_sha256 pins, naming what it found. An
// installed plugin is judged by its manifest (re-hashed); one put in a
// plugin folder by hand by the version it reports.
func checkPins(p plugins.Plugin, info sdk.Info, versionPin, sha256Pin string) error {
	if versionPin == "" && sha256Pin == "" {
		return nil
	}
	m, err := plugins.Installed(p)
	switch {
	case err == nil:
		return plugins.CheckPins(m, versionPin, sha256Pin)
	case errors.Is(err, fs.ErrNotExist):
		// The sha256 pin was checked when the plugin started.
		return plugins.CheckPins(plugins.Manifest{Name: p.Name, Version: info.Version, Source: p.Path}, versionPin, "")
	default:
		return err
	}
}
