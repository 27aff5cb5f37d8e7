// Package config reads and writes config.toml in gitlab-runner's format,
// for the keys berth supports: concurrent, check_interval, log_level,
// log_format, listen_address, shutdown_timeout, and per [[runners]] entry
// name, url, id, token (and its dates), executor, shell, limit,
// request_concurrency, builds_dir, cache_dir, environment, output_limit,
// the pre/post scripts, and the executor's own table ([runners.docker],
// [runners.shell], …), kept verbatim for that executor's plugin. Other keys
// are reported as warnings naming them; a file that cannot be used is an
// error naming the file, the key and what is wrong.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/berthci/berth/host/gitlab"
)

// Defaults as gitlab-runner has them.
const (
	DefaultConcurrent      = 1
	DefaultCheckInterval   = 3 // seconds
	DefaultShutdownTimeout = 30
	DefaultOutputLimit     = 4096 // KiB
)

// Config is a config.toml.
type Config struct {
	Concurrent      int      `toml:"concurrent"`
	CheckInterval   int      `toml:"check_interval"`
	LogLevel        string   `toml:"log_level"`
	LogFormat       string   `toml:"log_format"`
	ListenAddress   string   `toml:"listen_address"`
	ShutdownTimeout int      `toml:"shutdown_timeout"`
	Runners         []Runner `toml:"runners"`
}

// Runner is one [[runners]] entry.
type Runner struct {
	Name               string    `toml:"name"`
	URL                string    `toml:"url"`
	ID                 int64     `toml:"id"`
	Token              string    `toml:"token"`
	TokenObtainedAt    time.Time `toml:"token_obtained_at"`
	TokenExpiresAt     time.Time `toml:"token_expires_at"`
	Executor           string    `toml:"executor"`
	Shell              string    `toml:"shell"`
	Limit              int       `toml:"limit"`
	RequestConcurrency int       `toml:"request_concurrency"`
	BuildsDir          string    `toml:"builds_dir"`
	CacheDir           string    `toml:"cache_dir"`
	Environment        []string  `toml:"environment"`
	// OutputLimit is the trace limit in KiB (4096 when zero).
	OutputLimit int `toml:"output_limit"`
	// PluginVersion and PluginSHA256 pin the executor plugin: a semver
	// constraint ("~1.2") and the file's sha256. berth refuses to start a
	// runner whose plugin does not satisfy them.
	PluginVersion       string `toml:"plugin_version"`
	PluginSHA256        string `toml:"plugin_sha256"`
	PreGetSourcesScript string `toml:"pre_get_sources_script"`
	PreBuildScript      string `toml:"pre_build_script"`
	PostBuildScript     string `toml:"post_build_script"`
	// ExecutorSettings is the executor's table ([runners.<executor>]),
	// verbatim; empty when there is none.
	ExecutorSettings map[string]any `toml:"-"`
}

// CheckIntervalDuration is check_interval as a duration (default applied).
func (c *Config) CheckIntervalDuration() time.Duration {
	if c.CheckInterval <= 0 {
		return DefaultCheckInterval * time.Second
	}
	return time.Duration(c.CheckInterval) * time.Second
}

// ShutdownTimeoutDuration is shutdown_timeout as a duration.
func (c *Config) ShutdownTimeoutDuration() time.Duration {
	if c.ShutdownTimeout <= 0 {
		return DefaultShutdownTimeout * time.Second
	}
	return time.Duration(c.ShutdownTimeout) * time.Second
}

// OutputLimitBytes is output_limit in bytes.
func (r Runner) OutputLimitBytes() int64 {
	if r.OutputLimit <= 0 {
		return DefaultOutputLimit << 10
	}
	return int64(r.OutputLimit) << 10
}

// ShortToken is the part of the token shown in lists and logs.
func (r Runner) ShortToken() string {
	t := strings.TrimPrefix(r.Token, gitlab.CreatedRunnerTokenPrefix)
	if len(t) > 8 {
		t = t[:8]
	}
	return t
}

var topKeys = []string{"concurrent", "check_interval", "log_level", "log_format", "listen_address", "shutdown_timeout", "runners"}

var runnerKeys = []string{"name", "url", "id", "token", "token_obtained_at", "token_expires_at", "executor", "shell", "limit",
	"request_concurrency", "builds_dir", "cache_dir", "environment", "output_limit", "pre_get_sources_script",
	"pre_build_script", "post_build_script", "plugin_version", "plugin_sha256"}

// executorTables are the executor tables gitlab-runner knows; one that is
// not the runner's executor is ignored with a warning.
var executorTables = []string{"docker", "kubernetes", "ssh", "parallels", "virtualbox", "custom", "machine", "autoscaler", "shell", "instance", "docker-autoscaler", "lambda", "qemu"}

// Load reads and checks a config.toml. Warnings name the keys berth
// ignores.
func Load(path string) (*Config, []string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("reading the config: %w", err)
	}
	return Parse(data, path)
}

// Parse reads and checks the text of a config.toml; name says where it
// comes from in errors.
func Parse(data []byte, name string) (*Config, []string, error) {
	var raw map[string]any
	if _, err := toml.Decode(string(data), &raw); err != nil {
		return nil, nil, describe(name, err)
	}
	// Executor tables are taken out before the typed decoding: one may
	// share its name with a runner key ([runners.shell] and shell).
	tables := map[int]map[string]any{}
	runners, _ := raw["runners"].([]map[string]any)
	if _, ok := raw["runners"]; ok && runners == nil {
		return nil, nil, fmt.Errorf("%s: runners must be [[runners]] entries (an array of tables)", name)
	}
	for i, r := range runners {
		exec, _ := r["executor"].(string)
		if exec == "" {
			continue
		}
		switch t := r[exec].(type) {
		case nil:
		case map[string]any:
			tables[i] = t
			delete(r, exec)
		default:
			if !slices.Contains(runnerKeys, exec) {
				return nil, nil, fmt.Errorf("%s: [[runners]] #%d: runners.%s must be a table", name, i+1, exec)
			}
		}
	}
	var typed bytes.Buffer
	if err := toml.NewEncoder(&typed).Encode(raw); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", name, err)
	}
	var c Config
	if _, err := toml.Decode(typed.String(), &c); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", name, err)
	}
	if len(c.Runners) != len(runners) {
		return nil, nil, fmt.Errorf("%s: the runners could not be read", name)
	}
	var warnings []string
	for _, k := range sortedKeys(raw) {
		if !slices.Contains(topKeys, k) {
			warnings = append(warnings, fmt.Sprintf("%s: key %q is not one berth supports; it is ignored", name, k))
		}
	}
	for i, r := range runners {
		exec := c.Runners[i].Executor
		c.Runners[i].ExecutorSettings = tables[i]
		where := fmt.Sprintf("%s: [[runners]] #%d (%q)", name, i+1, c.Runners[i].Name)
		for _, k := range sortedKeys(r) {
			switch {
			case slices.Contains(runnerKeys, k):
			case slices.Contains(executorTables, k):
				warnings = append(warnings, fmt.Sprintf("%s: table [runners.%s] is ignored: the runner's executor is %q", where, k, exec))
			default:
				warnings = append(warnings, fmt.Sprintf("%s: key %q is not one berth supports; it is ignored", where, k))
			}
		}
	}
	if err := c.Validate(); err != nil {
		return nil, warnings, fmt.Errorf("%s: %w", name, err)
	}
	return &c, warnings, nil
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// describe words a TOML error with the file, line and column.
func describe(name string, err error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s:%d:%d: %s", name, pe.Position.Line, pe.Position.Col, pe.Message)
	}
	return fmt.Errorf("%s: %w", name, err)
}

// LogLevels are the log_level values accepted (gitlab-runner's).
var LogLevels = []string{"debug", "info", "warn", "warning", "error", "fatal", "panic"}

// LogFormats are the log_format values accepted.
var LogFormats = []string{"runner", "text", "json"}

// Validate checks the values; the first problem is the error.
func (c *Config) Validate() error {
	switch {
	case c.Concurrent < 0:
		return fmt.Errorf("concurrent must be 1 or more, not %d", c.Concurrent)
	case c.CheckInterval < 0:
		return fmt.Errorf("check_interval must not be negative (%d)", c.CheckInterval)
	case c.ShutdownTimeout < 0:
		return fmt.Errorf("shutdown_timeout must not be negative (%d)", c.ShutdownTimeout)
	case c.LogLevel != "" && !slices.Contains(LogLevels, c.LogLevel):
		return fmt.Errorf("log_level %q: use one of %s", c.LogLevel, strings.Join(LogLevels, ", "))
	case c.LogFormat != "" && !slices.Contains(LogFormats, c.LogFormat):
		return fmt.Errorf("log_format %q: use one of %s", c.LogFormat, strings.Join(LogFormats, ", "))
	}
	if c.ListenAddress != "" {
		if _, _, err := net.SplitHostPort(c.ListenAddress); err != nil {
			return fmt.Errorf("listen_address %q: want host:port: %w", c.ListenAddress, err)
		}
	}
	seen := map[string]int{}
	for i, r := range c.Runners {
		where := fmt.Sprintf("[[runners]] #%d (%q)", i+1, r.Name)
		if err := r.validate(); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		k := r.URL + "\x00" + r.Token
		if j, dup := seen[k]; dup {
			return fmt.Errorf("%s: same url and token as [[runners]] #%d", where, j+1)
		}
		seen[k] = i
	}
	return nil
}

func (r Runner) validate() error {
	switch {
	case r.URL == "":
		return errors.New("url is missing")
	case r.Token == "":
		return errors.New("token is missing")
	case r.Executor == "":
		return errors.New("executor is missing")
	case r.Limit < 0:
		return fmt.Errorf("limit must not be negative (%d)", r.Limit)
	case r.RequestConcurrency < 0:
		return fmt.Errorf("request_concurrency must not be negative (%d)", r.RequestConcurrency)
	case r.OutputLimit < 0:
		return fmt.Errorf("output_limit must not be negative (%d)", r.OutputLimit)
	}
	if _, err := gitlab.CleanURL(r.URL); err != nil {
		return err
	}
	for _, kv := range r.Environment {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return fmt.Errorf("environment entry %q: want KEY=VALUE", kv)
		}
	}
	for _, d := range []struct{ key, v string }{{"builds_dir", r.BuildsDir}, {"cache_dir", r.CacheDir}} {
		if d.v != "" && !filepath.IsAbs(d.v) {
			return fmt.Errorf("%s %q must be an absolute path", d.key, d.v)
		}
	}
	return nil
}

// runnerTable is the TOML table of a runner, without zero values.
func runnerTable(r Runner) map[string]any {
	m := map[string]any{"name": r.Name, "url": r.URL, "token": r.Token, "executor": r.Executor}
	set := func(k string, v any, zero bool) {
		if !zero {
			m[k] = v
		}
	}
	set("id", r.ID, r.ID == 0)
	set("token_obtained_at", r.TokenObtainedAt, r.TokenObtainedAt.IsZero())
	set("token_expires_at", r.TokenExpiresAt, r.TokenExpiresAt.IsZero())
	// [runners.shell] is the shell executor's table: its shell goes there.
	set("shell", r.Shell, r.Shell == "" || r.Executor == "shell")
	set("limit", r.Limit, r.Limit == 0)
	set("request_concurrency", r.RequestConcurrency, r.RequestConcurrency == 0)
	set("builds_dir", r.BuildsDir, r.BuildsDir == "")
	set("cache_dir", r.CacheDir, r.CacheDir == "")
	set("environment", r.Environment, len(r.Environment) == 0)
	set("output_limit", r.OutputLimit, r.OutputLimit == 0)
	set("pre_get_sources_script", r.PreGetSourcesScript, r.PreGetSourcesScript == "")
	set("pre_build_script", r.PreBuildScript, r.PreBuildScript == "")
	set("post_build_script", r.PostBuildScript, r.PostBuildScript == "")
	set("plugin_version", r.PluginVersion, r.PluginVersion == "")
	set("plugin_sha256", r.PluginSHA256, r.PluginSHA256 == "")
	settings := map[string]any{}
	for k, v := range r.ExecutorSettings {
		settings[k] = v
	}
	if r.Executor == "shell" && r.Shell != "" {
		if _, ok := settings["shell"]; !ok {
			settings["shell"] = r.Shell
		}
	}
	m[r.Executor] = settings
	return m
}

// Update rewrites the config file: edit gets its runners and returns the
// ones to keep (adding, changing, removing). Keys berth does not know are
// kept; comments are not. A missing file is made (with concurrent = 1 and
// check_interval = 0, as gitlab-runner writes it). The file is replaced
// atomically, mode 0600.
func Update(path string, edit func(runners []Runner) ([]Runner, error)) error {
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
	case errors.Is(err, os.ErrNotExist):
		data = nil
	default:
		return fmt.Errorf("reading the config: %w", err)
	}
	out, err := Rewrite(data, path, edit)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("writing the config: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, out, 0o600); err != nil {
		return fmt.Errorf("writing the config: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing the config: %w", err)
	}
	return nil
}

// Rewrite is Update on the text of a config (nil: no file yet).
func Rewrite(data []byte, name string, edit func(runners []Runner) ([]Runner, error)) ([]byte, error) {
	raw := map[string]any{}
	var current []Runner
	if data != nil {
		if _, err := toml.Decode(string(data), &raw); err != nil {
			return nil, describe(name, err)
		}
		c, _, err := Parse(data, name)
		if err != nil {
			return nil, err
		}
		current = c.Runners
	} else {
		raw["concurrent"] = DefaultConcurrent
		raw["check_interval"] = 0
		raw["shutdown_timeout"] = 0
	}
	rawRunners, _ := raw["runners"].([]map[string]any)
	next, err := edit(slices.Clone(current))
	if err != nil {
		return nil, err
	}
	// Keep the unknown keys of runners that stay (matched by token).
	var out []map[string]any
	for _, r := range next {
		t := runnerTable(r)
		for i, old := range current {
			if old.Token == r.Token && old.URL == r.URL && i < len(rawRunners) {
				for k, v := range rawRunners[i] {
					if _, ok := t[k]; !ok && !slices.Contains(runnerKeys, k) && k != old.Executor {
						t[k] = v
					}
				}
			}
		}
		out = append(out, t)
	}
	if len(out) == 0 {
		delete(raw, "runners")
	} else {
		raw["runners"] = out
	}
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(raw); err != nil {
		return nil, fmt.Errorf("writing the config: %w", err)
	}
	if _, _, err := Parse(buf.Bytes(), name); err != nil {
		return nil, fmt.Errorf("the new config would not be valid: %w", err)
	}
	return buf.Bytes(), nil
}
