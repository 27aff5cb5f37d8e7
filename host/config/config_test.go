package config

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const full = `
concurrent = 4
check_interval = 5
log_level = "debug"
log_format = "json"
listen_address = "127.0.0.1:9252"
shutdown_timeout = 12
sentry_dsn = "x"

[session_server]
  listen_address = "0.0.0.0:8093"

[[runners]]
  name = "docker-runner"
  url = "https://gitlab.example.com/"
  id = 7
  token = "glrt-abcdefghijkl"
  token_obtained_at = 2026-01-02T03:04:05Z
  token_expires_at = 0001-01-01T00:00:00Z
  executor = "docker"
  limit = 3
  request_concurrency = 2
  builds_dir = "/builds"
  cache_dir = "/cache"
  environment = ["A=1", "B=two=2"]
  output_limit = 8192
  pre_get_sources_script = "echo pre-get"
  pre_build_script = "echo pre"
  post_build_script = "echo post"
  clone_url = "https://other"
  [runners.docker]
    image = "alpine:3"
    privileged = false
    volumes = ["/cache"]
    [runners.docker.sysctls]
      "net.ipv4.ip_forward" = "1"
  [runners.kubernetes]
    namespace = "x"

[[runners]]
  name = "shell-runner"
  url = "http://127.0.0.1:8080"
  token = "t1_legacy"
  executor = "shell"
  [runners.shell]
    shell = "sh"
`

func TestParseFull(t *testing.T) {
	c, warnings, err := Parse([]byte(full), "config.toml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Concurrent != 4 || c.CheckIntervalDuration() != 5*time.Second || c.LogLevel != "debug" || c.LogFormat != "json" ||
		c.ListenAddress != "127.0.0.1:9252" || c.ShutdownTimeoutDuration() != 12*time.Second || len(c.Runners) != 2 {
		t.Fatalf("%+v", c)
	}
	d := c.Runners[0]
	if d.ID != 7 || d.Limit != 3 || d.RequestConcurrency != 2 || d.BuildsDir != "/builds" || d.CacheDir != "/cache" ||
		len(d.Environment) != 2 || d.OutputLimitBytes() != 8192<<10 || d.PreBuildScript != "echo pre" || d.PostBuildScript != "echo post" ||
		d.PreGetSourcesScript != "echo pre-get" || d.TokenObtainedAt.Year() != 2026 || d.ShortToken() != "abcdefgh" {
		t.Errorf("docker runner %+v", d)
	}
	if d.ExecutorSettings["image"] != "alpine:3" || d.ExecutorSettings["privileged"] != false {
		t.Errorf("docker table not passed verbatim: %#v", d.ExecutorSettings)
	}
	if sys, ok := d.ExecutorSettings["sysctls"].(map[string]any); !ok || sys["net.ipv4.ip_forward"] != "1" {
		t.Errorf("nested table: %#v", d.ExecutorSettings["sysctls"])
	}
	if s := c.Runners[1]; s.ExecutorSettings["shell"] != "sh" || s.Shell != "" {
		t.Errorf("[runners.shell] is the shell executor's table: %+v", s)
	}
	want := []string{`"sentry_dsn"`, `"session_server"`, `"clone_url"`, "[runners.kubernetes] is ignored"}
	all := strings.Join(warnings, "\n")
	for _, w := range want {
		if !strings.Contains(all, w) {
			t.Errorf("warnings lack %s:\n%s", w, all)
		}
	}
	if len(warnings) != len(want) {
		t.Errorf("%d warnings, want %d:\n%s", len(warnings), len(want), all)
	}
}

func TestParseErrors(t *testing.T) {
	runner := "[[runners]]\nname = \"r\"\nurl = \"https://g\"\ntoken = \"t\"\nexecutor = \"shell\"\n"
	tests := []struct{ name, text, want string }{
		{"syntax", "concurrent = = 1", "config.toml:1:"},
		{"type", "concurrent = \"four\"", "concurrent"},
		{"negative concurrent", "concurrent = -1", "concurrent must be 1 or more"},
		{"log level", `log_level = "loud"`, `log_level "loud"`},
		{"log format", `log_format = "xml"`, `log_format "xml"`},
		{"listen address", `listen_address = "9252"`, "listen_address"},
		{"runners not an array", "[runners]\nname = \"x\"", "[[runners]] entries"},
		{"no url", "[[runners]]\ntoken = \"t\"\nexecutor = \"shell\"", "url is missing"},
		{"no token", "[[runners]]\nurl = \"https://g\"\nexecutor = \"shell\"", "token is missing"},
		{"no executor", "[[runners]]\nurl = \"https://g\"\ntoken = \"t\"", "executor is missing"},
		{"bad url", "[[runners]]\nurl = \"g\"\ntoken = \"t\"\nexecutor = \"shell\"", "want http(s)://host"},
		{"bad env", runner + "environment = [\"NOEQUALS\"]", "KEY=VALUE"},
		{"relative builds_dir", runner + "builds_dir = \"builds\"", "absolute"},
		{"executor table not a table", "[[runners]]\nurl = \"https://g\"\ntoken = \"t\"\nexecutor = \"docker\"\ndocker = 1", "must be a table"},
		{"duplicate", runner + runner, "same url and token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := Parse([]byte(tt.text), "config.toml")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestUpdateKeepsWhatBerthDoesNotKnow(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(path, []byte(full), 0o600); err != nil {
		t.Fatal(err)
	}
	err := Update(path, func(rs []Runner) ([]Runner, error) {
		return append(rs[:1], Runner{Name: "new", URL: "https://gitlab.example.com", Token: "glrt-new", Executor: "shell", Shell: "bash"}), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	c, warnings, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Runners) != 2 || c.Runners[1].Name != "new" || c.Runners[1].ExecutorSettings["shell"] != "bash" {
		t.Errorf("runners %+v", c.Runners)
	}
	if c.Runners[0].ExecutorSettings["image"] != "alpine:3" {
		t.Errorf("the docker table was lost: %+v", c.Runners[0])
	}
	all := strings.Join(warnings, "\n")
	for _, w := range []string{"sentry_dsn", "session_server", "clone_url"} {
		if !strings.Contains(all, w) {
			t.Errorf("%s was dropped by the rewrite:\n%s", w, all)
		}
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", fi.Mode())
	}
	// A new file is made; removing every runner leaves a valid one.
	fresh := filepath.Join(t.TempDir(), "sub", "config.toml")
	if err := Update(fresh, func(rs []Runner) ([]Runner, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
	if c, _, err := Load(fresh); err != nil || len(c.Runners) != 0 || c.Concurrent != 1 {
		t.Errorf("%+v %v", c, err)
	}
}

func TestWatchAppliesValidChangesOnly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.toml")
	write := func(s string) {
		if err := os.WriteFile(path+".tmp", []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			t.Fatal(err)
		}
	}
	write("concurrent = 1\n")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reload := make(chan struct{})
	applied := make(chan int, 10)
	logged := make(chan string, 10)
	done := make(chan struct{})
	go func() {
		Watch(ctx, path, time.Hour, reload, slog.New(messageHandler{logged}), func(c *Config) error {
			applied <- c.Concurrent
			return nil
		})
		close(done)
	}()
	next := func(what string, c <-chan int) int {
		select {
		case v := <-c:
			return v
		case <-time.After(30 * time.Second):
			t.Fatalf("gave up waiting for %s", what)
			return 0
		}
	}
	write("concurrent = 2\n")
	reload <- struct{}{}
	if v := next("the first reload", applied); v != 2 {
		t.Fatalf("applied %d, want 2", v)
	}
	write("concurrent = -5\n")
	reload <- struct{}{}
	for msg := ""; !strings.Contains(msg, "not valid"); {
		select {
		case msg = <-logged:
		case <-time.After(30 * time.Second):
			t.Fatal("the invalid config was not reported")
		}
	}
	write("concurrent = 3\n")
	reload <- struct{}{}
	if v := next("the reload after the invalid one", applied); v != 3 {
		t.Fatalf("applied %d after the invalid file, want 3 (the invalid one must never be applied)", v)
	}
	cancel()
	<-done
	if len(applied) != 0 {
		t.Errorf("more configs applied than reloads: %d left", len(applied))
	}
}

// messageHandler sends each log record's message to a channel.
type messageHandler struct{ c chan<- string }

func (h messageHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h messageHandler) Handle(_ context.Context, r slog.Record) error {
	select {
	case h.c <- r.Message:
	default:
	}
	return nil
}
func (h messageHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h messageHandler) WithGroup(string) slog.Handler      { return h }

// FuzzParse: any text gives a config or an error, never a panic; a config
// that parsed is valid and survives Update's rewrite.
func FuzzParse(f *testing.F) {
	f.Add([]byte(full))
	f.Add([]byte("concurrent = 1\n"))
	f.Add([]byte("[[runners]]\nname=\"a\"\nurl=\"https://g\"\ntoken=\"t\"\nexecutor=\"shell\"\n[runners.shell]\nshell=\"sh\"\n"))
	f.Add([]byte("[[runners]]\nurl=\"https://g\"\ntoken=\"t\"\nexecutor=\"shell\"\nshell=\"bash\"\n"))
	f.Add([]byte("runners = 3"))
	f.Add([]byte("[[runners]]\nexecutor = \"name\"\nname = \"x\""))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, _, err := Parse(data, "fuzz.toml")
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse returned a config Validate refuses: %v", err)
		}
		out, err := Rewrite(data, "fuzz.toml", func(rs []Runner) ([]Runner, error) { return rs, nil })
		if err != nil {
			t.Fatalf("rewriting a valid config: %v", err)
		}
		c2, _, err := Parse(out, "rewritten.toml")
		if err != nil || len(c2.Runners) != len(c.Runners) {
			t.Fatalf("the rewritten config: %v\n%s", err, out)
		}
	})
}
