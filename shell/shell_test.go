//go:build linux

package shell

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berthci/berth/sdk"
)

// newConfigured returns an executor configured with settings plus a
// builds_dir of its own.
func newConfigured(t *testing.T, settings map[string]any, opts ...Option) *Executor {
	t.Helper()
	s := map[string]any{"builds_dir": t.TempDir()}
	for k, v := range settings {
		s[k] = v
	}
	e := New(opts...)
	if err := e.Configure(t.Context(), s); err != nil {
		t.Fatal(err)
	}
	return e
}

func prepare(t *testing.T, e *Executor, id string) sdk.Handle {
	t.Helper()
	h, err := e.Prepare(t.Context(), sdk.Job{ID: id})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Cleanup(context.Background(), h) })
	return h
}

// runScript runs script and fails the test if Run has not returned
// within a minute.
func runScript(t *testing.T, e *Executor, h sdk.Handle, shell, script string) (int, string, string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	type result struct {
		code int
		err  error
	}
	done := make(chan result, 1)
	go func() {
		code, err := e.Run(t.Context(), h, sdk.Step{Name: "test", Script: script, Shell: shell}, sdk.Output{Stdout: &stdout, Stderr: &stderr})
		done <- result{code, err}
	}()
	select {
	case r := <-done:
		return r.code, stdout.String(), stderr.String(), r.err
	case <-time.After(time.Minute):
		t.Fatalf("Run of %q did not return", script)
		return 0, "", "", nil
	}
}

// processGone reports whether pid has ended (a zombie has).
func processGone(pid int) bool {
	if errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
		return true
	}
	state, _, ok := procStat(pid)
	return !ok || state == 'Z'
}

func TestConfigureErrors(t *testing.T) {
	tests := []struct {
		name     string
		settings map[string]any
		wantErr  string // "" means success; else the key the error must name
	}{
		{"defaults", map[string]any{}, ""},
		{"all set", map[string]any{"builds_dir": "/tmp/x", "shell": "sh", "keep_builds_dir": "true", "env_allowlist": "PATH,HOME"}, ""},
		{"list as list", map[string]any{"env_allowlist": []any{"PATH", "LC_*"}}, ""},
		{"unknown key", map[string]any{"no_such_key": 1}, "no_such_key"},
		{"wrong type", map[string]any{"keep_builds_dir": "maybe"}, "keep_builds_dir"},
		{"wrong type table", map[string]any{"env_allowlist": map[string]any{"a": 1}}, "env_allowlist"},
		{"unknown shell", map[string]any{"shell": "zsh"}, "shell"},
		{"relative builds_dir", map[string]any{"builds_dir": "builds"}, "builds_dir"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := New().Configure(t.Context(), tt.settings)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("Configure(%v): %v", tt.settings, err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), `"`+tt.wantErr+`"`)):
				t.Errorf("Configure(%v) returned %v; want an error naming %q", tt.settings, err, tt.wantErr)
			}
		})
	}
}

func TestAllowedEnv(t *testing.T) {
	environ := []string{"PATH=/bin", "HOME=/home/me", "CI_JOB_TOKEN=secret", "LC_ALL=C", "LC_TIME=x", "LCX=no", "EMPTY=", "broken"}
	tests := []struct {
		allow, want []string
	}{
		{nil, []string{}},
		{[]string{"PATH"}, []string{"PATH=/bin"}},
		{[]string{"LC_*", "EMPTY"}, []string{"LC_ALL=C", "LC_TIME=x", "EMPTY="}},
		{defaultSettings().EnvAllowlist, []string{"PATH=/bin", "HOME=/home/me", "LC_ALL=C"}},
		{[]string{"*"}, []string{"PATH=/bin", "HOME=/home/me", "CI_JOB_TOKEN=secret", "LC_ALL=C", "LC_TIME=x", "LCX=no", "EMPTY="}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.allow, ","), func(t *testing.T) {
			got := allowedEnv(environ, tt.allow)
			if got == nil || !slices.Equal(got, tt.want) {
				t.Errorf("allowedEnv(%q) = %#v, want %#v", tt.allow, got, tt.want)
			}
		})
	}
}

// envNames runs `env` in a step and returns the variables it printed,
// leaving out those the shell sets itself.
func envNames(t *testing.T, e *Executor, h sdk.Handle) map[string]string {
	t.Helper()
	code, out, stderr, err := runScript(t, e, h, "bash", "env")
	if err != nil || code != 0 {
		t.Fatalf("env: %d %v %s", code, err, stderr)
	}
	vars := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		k, v, _ := strings.Cut(line, "=")
		switch k {
		case "PWD", "OLDPWD", "SHLVL", "_":
		default:
			vars[k] = v
		}
	}
	return vars
}

func TestScriptsSeeOnlyAllowedVariables(t *testing.T) {
	environ := func() []string {
		return []string{"PATH=" + os.Getenv("PATH"), "HOME=/home/sdk", "CI_JOB_TOKEN=secret", "LC_FOO=bar", "LCX=no"}
	}
	e := newConfigured(t, map[string]any{"env_allowlist": []any{"PATH", "HOME", "LC_*"}}, WithEnviron(environ))
	h := prepare(t, e, "env")
	got := envNames(t, e, h)
	// JobMarker is the executor's own, always set: Cleanup finds leftovers by it.
	want := map[string]string{"PATH": os.Getenv("PATH"), "HOME": "/home/sdk", "LC_FOO": "bar", JobMarker: "env"}
	if !mapsEqual(got, want) {
		t.Errorf("the script's environment is %v, want %v", got, want)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// A prepared job keeps the settings it was prepared with.
func TestConfigureKeepsPreparedJobs(t *testing.T) {
	environ := func() []string { return []string{"PATH=" + os.Getenv("PATH"), "SDK_A=a", "SDK_B=b"} }
	e := newConfigured(t, map[string]any{"env_allowlist": "PATH,SDK_A"}, WithEnviron(environ))
	h := prepare(t, e, "keeps")
	if err := e.Configure(t.Context(), map[string]any{"builds_dir": t.TempDir(), "env_allowlist": "PATH,SDK_B"}); err != nil {
		t.Fatal(err)
	}
	got := envNames(t, e, h)
	if got["SDK_A"] != "a" || got["SDK_B"] != "" {
		t.Errorf("a job prepared with env_allowlist PATH,SDK_A sees %v after a reconfigure", got)
	}
	if _, err := os.Stat(h.BuildDir); err != nil {
		t.Errorf("build directory of the job prepared before the reconfigure: %v", err)
	}
}

func TestExitCodes(t *testing.T) {
	e := newConfigured(t, nil)
	h := prepare(t, e, "codes")
	tests := []struct {
		shell, script string
		want          int
	}{
		{"bash", "exit 255", 255},
		{"sh", "exit 3", 3},
		{"", "exit 4", 4},
		{"bash", "kill -TERM $$", 128 + 15},
		{"sh", "kill -KILL $$", 128 + 9},
		{"bash", "echo $0 | grep -q /step-", 0}, // runs from a script file
	}
	for _, tt := range tests {
		t.Run(tt.shell+" "+tt.script, func(t *testing.T) {
			code, _, stderr, err := runScript(t, e, h, tt.shell, tt.script)
			if err != nil || code != tt.want {
				t.Errorf("exit code %d, error %v (stderr %q); want %d and no error", code, err, stderr, tt.want)
			}
		})
	}
}

func TestRunRefuses(t *testing.T) {
	e := newConfigured(t, nil)
	h := prepare(t, e, "refuses")
	gone := prepare(t, e, "gone")
	if err := e.Cleanup(t.Context(), gone); err != nil {
		t.Fatal(err)
	}
	old := h
	old.Version = 99
	tests := []struct {
		name    string
		h       sdk.Handle
		shell   string
		wantErr string
	}{
		{"unknown shell", h, "pwsh", `"pwsh"`},
		{"cleaned up", gone, "sh", "cleaned up"},
		{"newer handle", old, "sh", "version 99"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, _, err := runScript(t, e, tt.h, tt.shell, "true")
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Run returned %d, %v; want an error mentioning %s", code, err, tt.wantErr)
			}
		})
	}
}

// A background process left by a script is killed when the script ends
// instead of keeping the step running (gitlab-runner issue 2880).
func TestBackgroundProcessDoesNotHangStep(t *testing.T) {
	e := newConfigured(t, nil)
	h := prepare(t, e, "background")
	code, out, _, err := runScript(t, e, h, "bash", `sleep 1000 &
echo "pid $!"`)
	if err != nil || code != 0 {
		t.Fatalf("Run: %d %v", code, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(out, "pid ")))
	if err != nil {
		t.Fatalf("output %q", out)
	}
	if !processGone(pid) {
		t.Errorf("background process %d still runs after the step", pid)
	}
}

// A process that leaves the step's process group keeps the pipes open;
// Run still returns, with the output written before the shell exited.
func TestEscapedProcessDoesNotHangStep(t *testing.T) {
	if _, err := exec.LookPath("setsid"); err != nil {
		t.Skip("setsid is not installed")
	}
	e := newConfigured(t, nil)
	h := prepare(t, e, "escaped")
	code, out, _, err := runScript(t, e, h, "bash", `setsid sleep 1000 &
echo "pid $!"`)
	pid, perr := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(out, "pid ")))
	if perr == nil {
		t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	}
	if err != nil || code != 0 || perr != nil {
		t.Fatalf("Run: %d %v, output %q", code, err, out)
	}
}

func TestDirName(t *testing.T) {
	ids := []string{"123", "a/b", "a_b", "..", ".", "", "../../etc", "job id with spaces", strings.Repeat("x", 200), "ünï"}
	seen := map[string]string{}
	for _, id := range ids {
		n := dirName(id)
		if strings.ContainsAny(n, "/\\ ") || n == "." || n == ".." || n == "" || len(n) > 64 {
			t.Errorf("dirName(%q) = %q, not a safe directory name", id, n)
		}
		if other, ok := seen[n]; ok {
			t.Errorf("dirName(%q) = dirName(%q) = %q", id, other, n)
		}
		seen[n] = id
	}
	if got := dirName("1234-5"); got != "1234-5" {
		t.Errorf("dirName(%q) = %q, want it unchanged", "1234-5", got)
	}
}

func TestPrepareAndCleanup(t *testing.T) {
	exists := func(p string) bool { _, err := os.Lstat(p); return err == nil }

	t.Run("prepare twice reuses", func(t *testing.T) {
		e := newConfigured(t, nil)
		h1 := prepare(t, e, "twice")
		if err := os.WriteFile(filepath.Join(h1.BuildDir, "f"), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		h2 := prepare(t, e, "twice")
		if h1.BuildDir != h2.BuildDir || !exists(filepath.Join(h2.BuildDir, "f")) {
			t.Errorf("second Prepare gave %s, first %s", h2.BuildDir, h1.BuildDir)
		}
	})
	t.Run("cleanup removes build and tmp dirs", func(t *testing.T) {
		e := newConfigured(t, nil)
		h := prepare(t, e, "rm")
		if err := e.Cleanup(t.Context(), h); err != nil {
			t.Fatal(err)
		}
		if exists(h.BuildDir) || exists(h.BuildDir+".tmp") {
			t.Errorf("%s or its .tmp is still there", h.BuildDir)
		}
		if err := e.Cleanup(t.Context(), h); err != nil {
			t.Errorf("second Cleanup: %v", err)
		}
	})
	t.Run("keep_builds_dir", func(t *testing.T) {
		e := newConfigured(t, map[string]any{"keep_builds_dir": true})
		h := prepare(t, e, "keep")
		// A reconfigure does not change what the job was prepared with.
		if err := e.Configure(t.Context(), map[string]any{"builds_dir": filepath.Dir(h.BuildDir)}); err != nil {
			t.Fatal(err)
		}
		if err := e.Cleanup(t.Context(), h); err != nil {
			t.Fatal(err)
		}
		if !exists(h.BuildDir) || exists(h.BuildDir+".tmp") {
			t.Errorf("keep_builds_dir: build dir there %v (want true), .tmp there %v (want false)", exists(h.BuildDir), exists(h.BuildDir+".tmp"))
		}
	})
	t.Run("handle with only the job ID", func(t *testing.T) {
		e := newConfigured(t, nil)
		h := prepare(t, e, "failed")
		if err := e.Cleanup(t.Context(), sdk.Handle{JobID: "failed"}); err != nil {
			t.Fatal(err)
		}
		if exists(h.BuildDir) || exists(h.BuildDir+".tmp") {
			t.Errorf("%s is still there", h.BuildDir)
		}
	})
	t.Run("fresh executor", func(t *testing.T) {
		h := prepare(t, newConfigured(t, nil), "fresh")
		if err := New().Cleanup(t.Context(), h); err != nil {
			t.Fatal(err)
		}
		if exists(h.BuildDir) {
			t.Errorf("%s is still there", h.BuildDir)
		}
	})
	t.Run("damaged handle", func(t *testing.T) {
		e := newConfigured(t, nil)
		h := prepare(t, e, "damaged")
		victim := t.TempDir()
		state, _ := json.Marshal(jobState{BuildDir: victim})
		bad := sdk.Handle{JobID: "damaged", Version: stateVersion, State: state}
		if err := e.Cleanup(t.Context(), bad); err == nil || !strings.Contains(err.Error(), victim) {
			t.Errorf("Cleanup of a handle naming another directory returned %v; want an error naming it", err)
		}
		if !exists(victim) || !exists(h.BuildDir) {
			t.Errorf("a damaged handle removed something")
		}
	})
}

func TestUploadRefusesLinkedDir(t *testing.T) {
	e := newConfigured(t, nil)
	h := prepare(t, e, "upload")
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(h.BuildDir, "out")); err != nil {
		t.Fatal(err)
	}
	err := e.Upload(t.Context(), h, "out/sub", bytes.NewReader(nil))
	if err == nil || !strings.Contains(err.Error(), `"out"`) {
		t.Errorf("Upload into a linked directory returned %v; want an error naming it", err)
	}
	if entries, _ := os.ReadDir(outside); len(entries) > 0 {
		t.Errorf("Upload wrote through the link: %v", entries)
	}
}
