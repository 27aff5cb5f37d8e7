package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/berthci/berth/internal/testplugin"
	"github.com/berthci/berth/plugins/registrytest"
)

func init() { testplugin.ServeIfAsked() }

// testPlugin writes berth-executor-<name> into a new folder: the shell
// executor as name at version. It returns the file's path.
func testPlugin(t *testing.T, name, version string) string {
	return testplugin.Write(t, t.TempDir(), name, version)
}

func sha256Of(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(data)
	return hex.EncodeToString(s[:])
}

// host is one runner host's berth: its own user plugin folder and config
// folder, kept across the commands of a test.
type host struct {
	t              *testing.T
	data, config   string
	pluginDir, cwd string
}

func newHost(t *testing.T) *host {
	return &host{t: t, data: t.TempDir(), config: t.TempDir()}
}

func (h *host) userPlugins() string { return filepath.Join(h.data, "berth", "plugins") }

// run runs berth to its end and returns its output and exit code.
func (h *host) run(args ...string) (string, int) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, berthBin, args...)
	cmd.Dir = h.cwd
	cmd.Env = append(cleanEnv(), "XDG_DATA_HOME="+h.data, "XDG_CONFIG_HOME="+h.config)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		h.t.Fatalf("running berth %v: %v", args, err)
	}
	return out.String(), code
}

// ok runs berth and fails the test unless it exits 0.
func (h *host) ok(args ...string) string {
	h.t.Helper()
	out, code := h.run(args...)
	if code != 0 {
		h.t.Fatalf("berth %s exited %d:\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

// fails runs berth, wants a non-zero exit and output holding every part.
func (h *host) fails(parts []string, args ...string) string {
	h.t.Helper()
	out, code := h.run(args...)
	if code == 0 {
		h.t.Fatalf("berth %s succeeded; want a failure with %q:\n%s", strings.Join(args, " "), parts, out)
	}
	for _, p := range parts {
		if !strings.Contains(out, p) {
			h.t.Errorf("berth %s: output lacks %q:\n%s", strings.Join(args, " "), p, out)
		}
	}
	return out
}

// cleanEnv is the test's environment without what would point berth at
// the developer's own plugins or config.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "BERTH_PLUGIN_DIR", "BERTH_CONFIG", "XDG_DATA_HOME", "XDG_CONFIG_HOME":
			continue
		}
		env = append(env, kv)
	}
	return env
}

// userDirEntries lists the user plugin folder, lock file left out.
func (h *host) userDirEntries() []string {
	entries, _ := os.ReadDir(h.userPlugins())
	var names []string
	for _, e := range entries {
		if e.Name() != ".berth-plugins.lock" {
			names = append(names, e.Name())
		}
	}
	return names
}

var hostPlatform = runtime.GOOS + "/" + runtime.GOARCH

// TestPluginsPublishInstallRun: a team publishes signed builds to a real
// registry; a host installs by tag and by range, runs a job with the
// plugin, pins its digest, notices tampering, and removes it.
func TestPluginsPublishInstallRun(t *testing.T) {
	reg := registrytest.Start(t)
	team := newHost(t)
	team.cwd = t.TempDir()
	key := filepath.Join(team.cwd, "team-key")
	pub := team.ok("plugins", "keygen", key)
	if !strings.HasPrefix(pub, "ed25519:") {
		t.Fatalf("keygen printed %q; want the public key first", pub)
	}
	repo := reg.Host + "/team/berth-executor-team"
	for _, v := range []string{"1.2.0", "1.2.5", "1.3.0"} {
		out := team.ok("plugins", "publish", "--plain-http", "--platform", hostPlatform, "--sign-key", key, testPlugin(t, "team", v), repo+":"+v)
		if !strings.Contains(out, `published executor "team" `+v+" as "+repo+":"+v+"@sha256:") || !strings.Contains(out, "signed by key") {
			t.Errorf("publish %s printed:\n%s", v, out)
		}
	}

	h := newHost(t)
	trust := []string{"--trusted-key", key + ".pub", "--require-signature"}
	out := h.ok(append([]string{"plugins", "install", "--plain-http", repo + ":1.2.0"}, trust...)...)
	if !strings.Contains(out, `installed executor "team" 1.2.0`) || !strings.Contains(out, "signed     by key") {
		t.Errorf("install by tag printed:\n%s", out)
	}
	out = h.ok(append([]string{"plugins", "install", "--plain-http", repo + ":~1.2"}, trust...)...)
	if !strings.Contains(out, `installed executor "team" 1.2.5`) || !strings.Contains(out, repo+":1.2.5@sha256:") {
		t.Errorf("install by range ~1.2 printed:\n%s", out)
	}
	installed := filepath.Join(h.userPlugins(), "berth-executor-team")
	sum := sha256Of(t, installed)
	out = h.ok("plugins", "list")
	if !regexp.MustCompile(`(?m)^team\s+1\.2\.5\s+1\s+installed\s+` + regexp.QuoteMeta(installed) + `\s+` + sum[:12] + `\s`).MatchString(out) {
		t.Errorf("plugins list does not show team 1.2.5 installed with its digest:\n%s", out)
	}
	if out := h.ok("plugins", "inspect", "team"); !strings.Contains(out, "resolved   "+repo+":1.2.5@sha256:") || !strings.Contains(out, sum) {
		t.Errorf("plugins inspect does not say how team was installed:\n%s", out)
	}
	if out := h.ok("plugins", "verify"); !regexp.MustCompile(`(?m)^team\s+ok\s+1\.2\.5\s+` + sum[:12]).MatchString(out) {
		t.Errorf("plugins verify:\n%s", out)
	}

	// A job runs with it, also pinned to its digest.
	dir := writePipeline(t, "built:\n  script: [echo \"ran by $BERTH_JOB_ID\"]\n")
	for _, extra := range [][]string{nil, {"--plugin-sha256", sum}} {
		out := h.ok(append([]string{"exec", "--no-color", "-C", dir, "--executor", "team"}, extra...)...)
		if !strings.Contains(out, "Job succeeded") || !strings.Contains(out, "ran by local-") {
			t.Errorf("exec %v with the installed plugin:\n%s", extra, out)
		}
	}
	h.fails([]string{`"team"`, "does not match its pinned sha256"}, "exec", "-C", dir, "--executor", "team", "--plugin-sha256", strings.Repeat("0", 64))

	// Tampered: verify, exec and list refuse it.
	f, err := os.OpenFile(installed, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("echo pwned\n")
	f.Close()
	h.fails([]string{"FAILED", "changed since it was installed", "1 of 1 executor plugins failed verification"}, "plugins", "verify")
	h.fails([]string{`executor plugin "team"`, "changed since it was installed", "installed from " + repo + ":~1.2 with sha256 " + sum}, "exec", "-C", dir, "--executor", "team")
	h.fails([]string{"ERROR", "changed since it was installed"}, "plugins", "list")

	// Reinstall, then remove.
	h.ok(append([]string{"plugins", "install", "--plain-http", repo + ":latest"}, trust...)...)
	if out := h.ok("plugins", "verify", "team"); !strings.Contains(out, "1.3.0") {
		t.Errorf("after reinstalling latest, verify says:\n%s", out)
	}
	if out := h.ok("plugins", "remove", "team"); !strings.Contains(out, `removed executor "team" 1.3.0`) {
		t.Errorf("remove printed:\n%s", out)
	}
	if got := h.userDirEntries(); len(got) != 0 {
		t.Errorf("after remove the plugin folder holds %v", got)
	}
	h.fails([]string{`"team" is not installed`}, "plugins", "remove", "team")
}

// TestPluginsInstallRefusals: each refusal is a clear error and leaves
// nothing installed.
func TestPluginsInstallRefusals(t *testing.T) {
	reg := registrytest.Start(t)
	plugin := testPlugin(t, "web", "1.0.0")
	sum := sha256Of(t, plugin)
	body, _ := os.ReadFile(plugin)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/berth-executor-web" {
			http.NotFound(w, r)
			return
		}
		w.Write(body)
	}))
	defer srv.Close()
	url := srv.URL + "/berth-executor-web"

	team := newHost(t)
	team.cwd = t.TempDir()
	team.ok("plugins", "keygen", "good-key")
	team.ok("plugins", "keygen", "other-key")
	goodKey, otherKey := filepath.Join(team.cwd, "good-key"), filepath.Join(team.cwd, "other-key")
	repo := reg.Host + "/team/berth-executor-web"
	team.ok("plugins", "publish", "--plain-http", "--platform", hostPlatform, "--sign-key", otherKey, plugin, repo+":1.0.0")
	team.ok("plugins", "publish", "--plain-http", "--platform", "linux/s390x", plugin, repo+":1.1.0")
	badSig := strings.TrimSpace(team.ok("plugins", "sign", "--key", otherKey, plugin))
	goodSig := strings.TrimSpace(team.ok("plugins", "sign", "--key", goodKey, plugin))
	down := registrytest.Start(t)
	downHost := down.Host
	down.Stop()

	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"URL without a digest", []string{url}, []string{"--sha256", "--insecure-skip-verify"}},
		{"URL with a wrong digest", []string{url, "--sha256", strings.Repeat("1", 64)}, []string{"has sha256 " + sum, "not the " + strings.Repeat("1", 64)}},
		{"file with a bad signature", []string{plugin, "--signature", badSig, "--trusted-key", goodKey + ".pub"}, []string{"bad signature"}},
		{"registry plugin signed by an untrusted key", []string{"--plain-http", repo + ":1.0.0", "--trusted-key", goodKey + ".pub"}, []string{"bad signature"}},
		{"no layer for this os/arch", []string{"--plain-http", repo + ":1.1.0"}, []string{"no build for " + hostPlatform, "linux/s390x"}},
		{"registry down", []string{"--plain-http", downHost + "/team/berth-executor-web:1.0.0"}, []string{"cannot reach the registry " + downHost}},
		{"unsigned with require_signature in config", []string{url, "--sha256", sum, "--config", writeConfig(t, "[plugins]\nrequire_signature = true\n")}, []string{"not signed", "required"}},
		{"unknown config key", []string{url, "--sha256", sum, "--config", writeConfig(t, "[plugins]\ntrusted_key = []\n")}, []string{"plugins.trusted_key"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHost(t)
			h.fails(tt.want, append([]string{"plugins", "install"}, tt.args...)...)
			if got := h.userDirEntries(); len(got) != 0 {
				t.Errorf("a refused install left %v", got)
			}
		})
	}
	t.Run("URL with its digest and a good signature", func(t *testing.T) {
		h := newHost(t)
		out := h.ok("plugins", "install", url, "--sha256", sum, "--signature", goodSig, "--config", writeConfig(t, "[plugins]\nrequire_signature = true\ntrusted_keys = [\""+goodKey+".pub\"]\n"))
		if !strings.Contains(out, `installed executor "web" 1.0.0`) || !strings.Contains(out, "by key") {
			t.Errorf("install printed:\n%s", out)
		}
	})
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestPluginsPublishChecksThePlugin(t *testing.T) {
	reg := registrytest.Start(t)
	h := newHost(t)
	repo := reg.Host + "/team/berth-executor-checked"
	h.fails([]string{"the tag says version 2.0.0", "the plugin says it is version 1.0.0"},
		"plugins", "publish", "--plain-http", "--platform", hostPlatform, testPlugin(t, "checked", "1.0.0"), repo+":2.0.0")
	junk := filepath.Join(t.TempDir(), "berth-executor-checked")
	os.WriteFile(junk, []byte("#!/bin/sh\nexit 1\n"), 0o755)
	h.fails([]string{"not a working berth executor plugin"}, "plugins", "publish", "--plain-http", "--platform", hostPlatform, junk, repo+":1.0.0")
	h.fails([]string{"cannot tell which OS/ARCH", "--platform"}, "plugins", "publish", "--plain-http", testPlugin(t, "checked", "1.0.0"), repo+":1.0.0")
	h.fails([]string{"name the version"}, "plugins", "publish", "--plain-http", testPlugin(t, "checked", "1.0.0"), repo)
	// The version may come from the plugin when the tag is not one.
	out := h.ok("plugins", "publish", "--plain-http", "--platform", hostPlatform, testPlugin(t, "checked", "1.0.0"), repo+":stable")
	if !strings.Contains(out, `published executor "checked" 1.0.0 as `+repo+":stable@") {
		t.Errorf("publish to a non-version tag printed:\n%s", out)
	}
}

// TestGuide runs docs/writing-an-executor.md: its "sh guide" blocks and
// its "file=NAME" blocks, in order, in a new folder, with the berth binary
// and a real registry. The guide cannot rot.
func TestGuide(t *testing.T) {
	if testing.Short() {
		t.Skip("the guide builds and tests a new executor module")
	}
	reg := registrytest.Start(t)
	script, err := guideScript("../../docs/writing-an-executor.md")
	if err != nil {
		t.Fatal(err)
	}
	src, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	os.WriteFile(filepath.Join(work, "guide.sh"), []byte(script), 0o644)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "guide.sh")
	cmd.Dir = work
	cmd.Env = append(cleanEnv(),
		"PATH="+filepath.Dir(berthBin)+":"+os.Getenv("PATH"),
		"REGISTRY="+reg.Host,
		"BERTH_SRC="+src,
		"XDG_DATA_HOME="+t.TempDir(),
		"XDG_CONFIG_HOME="+t.TempDir(),
	)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err = cmd.Run()
	t.Logf("the guide's steps took %s", time.Since(start).Round(time.Second))
	if err != nil {
		t.Fatalf("the guide's script failed: %v\n%s", err, out.String())
	}
	text := out.String()
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`ok\s+example.com/berth-executor-nice`),                    // conformance suite
		regexp.MustCompile(`running at niceness \d+`),                                 // the job, from --plugin-dir
		regexp.MustCompile(`published executor "nice" 0\.1\.0 as .*:0\.1\.0@sha256:`), // publish
		regexp.MustCompile(`installed executor "nice" 0\.1\.0`),                       // install by range
		regexp.MustCompile(`signed\s+by key [0-9a-f]{16}`),                            // signature checked
		regexp.MustCompile(`(?m)^nice\s+0\.1\.0\s+1\s+installed\s`),                   // list
		regexp.MustCompile(`(?m)^nice\s+ok\s+0\.1\.0`),                                // verify
		regexp.MustCompile(`(?s)installed executor.*Job succeeded.*Job succeeded`),    // exec, installed and pinned
	} {
		if !want.MatchString(text) {
			t.Errorf("the guide's output does not match %s:\n%s", want, text)
		}
	}
}

// guideScript turns the guide into a bash script: "sh guide" blocks as
// they are, "… guide file=NAME" blocks as files written with a here
// document; other blocks are left out.
func guideScript(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var b strings.Builder
	b.WriteString("set -euxo pipefail\n")
	sc := bufio.NewScanner(f)
	var block []string
	var file string
	in, keep, blocks := false, false, 0
	for line := 1; sc.Scan(); line++ {
		l := sc.Text()
		switch {
		case !in && strings.HasPrefix(l, "```"):
			in, block = true, nil
			fields := strings.Fields(strings.TrimPrefix(l, "```"))
			keep, file = len(fields) > 1 && fields[1] == "guide", ""
			for _, f := range fields[min(2, len(fields)):] {
				if name, ok := strings.CutPrefix(f, "file="); ok {
					file = name
				}
			}
			if keep && fields[0] != "sh" && file == "" {
				return "", fmt.Errorf("%s:%d: a guide block that is not sh needs file=NAME", path, line)
			}
		case in && l == "```":
			in = false
			if !keep {
				continue
			}
			blocks++
			body := strings.Join(block, "\n") + "\n"
			if file != "" {
				fmt.Fprintf(&b, "cat > %s <<'BERTH_GUIDE_EOF'\n%sBERTH_GUIDE_EOF\n", file, body)
			} else {
				b.WriteString(body)
			}
		case in:
			block = append(block, l)
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	if in || blocks == 0 {
		return "", fmt.Errorf("%s: an unclosed block, or no guide block", path)
	}
	return b.String(), nil
}
