package plugins

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-plugin"

	"github.com/berthci/berth/internal/syncbuf"
	"github.com/berthci/berth/internal/testplugin"
	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/shell"
)

// berthBin is berth, built once: its built-in shell executor is a real
// plugin process for these tests.
var berthBin string

func TestMain(m *testing.M) {
	// The test binary doubles as a plugin that speaks the right protocol
	// but without TLS: the host must not talk to it in clear.
	if os.Getenv("BERTH_TEST_PLUGIN") == "plaintext" {
		plugin.Serve(&plugin.ServeConfig{
			HandshakeConfig:  sdk.Handshake(),
			VersionedPlugins: sdk.PluginSets(shell.New()),
			GRPCServer:       plugin.DefaultGRPCServer,
		})
		return
	}
	dir, err := os.MkdirTemp("", "berth-plugins-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	berthBin, err = testplugin.BuildBerth(dir, "../cmd/berth")
	if err != nil {
		fmt.Fprintln(os.Stderr, "building berth:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func shellPlugin() Plugin {
	return Plugin{Name: "shell", Path: berthBin, Args: []string{"__serve-executor", "shell"}, Builtin: true}
}

func TestStartDescribesAndLogsTaggedWithName(t *testing.T) {
	var logs syncbuf.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	inst, err := Start(context.Background(), shellPlugin(), StartOptions{Log: log})
	if err != nil {
		t.Fatal(err)
	}
	info := inst.Info()
	if info.Name != "shell" || info.ProtocolVersion != sdk.ProtocolVersion || len(info.Config) == 0 {
		t.Errorf("Info = %+v", info)
	}
	if inst.Pid() <= 0 {
		t.Errorf("no pid")
	}
	inst.Kill()
	if !inst.Exited() {
		t.Errorf("plugin still running after Kill")
	}
	// The plugin logs when it shuts down; its line must reach our log
	// tagged with its name.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "executor plugin shutting down") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	var line string
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "executor plugin shutting down") {
			line = l
		}
	}
	if !strings.Contains(line, "plugin=shell") {
		t.Errorf("the plugin's log line is missing or not tagged plugin=shell:\n%s", logs.String())
	}
}

func TestStartRefusals(t *testing.T) {
	dir := t.TempDir()
	script := func(name, body string) string {
		p := filepath.Join(dir, FilePrefix+name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	sum := func(path string) string {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		s := sha256.Sum256(data)
		return hex.EncodeToString(s[:])
	}
	hangs := script("hangs", "exec sleep 60")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	plaintext := script("plaintext", "BERTH_TEST_PLUGIN=plaintext exec '"+self+"'")
	exits := script("exits", "echo 'cannot start: no config' >&2; exit 3")
	tests := []struct {
		name string
		p    Plugin
		opts StartOptions
		want []string
	}{
		{
			name: "wrong checksum",
			p:    shellPlugin(),
			opts: StartOptions{SHA256: strings.Repeat("ab", 32)},
			want: []string{`"shell"`, berthBin, "does not match its pinned sha256"},
		},
		{
			name: "malformed checksum",
			p:    shellPlugin(),
			opts: StartOptions{SHA256: "xyz"},
			want: []string{`"shell"`, "not 64 hex digits"},
		},
		{
			name: "no handshake within the start timeout",
			p:    Plugin{Name: "hangs", Path: hangs},
			opts: StartOptions{StartTimeout: time.Second},
			want: []string{`"hangs"`, hangs, "failed to start"},
		},
		{
			name: "serves without TLS",
			p:    Plugin{Name: "plaintext", Path: plaintext},
			opts: StartOptions{StartTimeout: 3 * time.Second},
			want: []string{`"plaintext"`, plaintext},
		},
		{
			name: "exits at once",
			p:    Plugin{Name: "exits", Path: exits},
			want: []string{`"exits"`, exits, "failed to start"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inst, err := Start(context.Background(), tt.p, tt.opts)
			if err == nil {
				inst.Kill()
				t.Fatal("started; want a refusal")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
	t.Run("right checksum", func(t *testing.T) {
		inst, err := Start(context.Background(), shellPlugin(), StartOptions{SHA256: sum(berthBin)})
		if err != nil {
			t.Fatal(err)
		}
		inst.Kill()
	})
}

func TestSupervisorRestartsDeadPlugin(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	sup := NewSupervisor(shellPlugin(), map[string]any{"builds_dir": t.TempDir()}, StartOptions{Log: log})
	defer sup.Close()
	ctx := context.Background()
	first, err := sup.Instance(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h, err := sup.Prepare(ctx, sdk.Job{ID: "restart-1"})
	if err != nil {
		t.Fatal(err)
	}
	// A step leaves a background process behind when the plugin dies.
	pidFile := filepath.Join(t.TempDir(), "pid")
	stepDone := make(chan error, 1)
	go func() {
		_, err := sup.Run(ctx, h, sdk.Step{Name: "script", Shell: "sh", GracePeriod: time.Second,
			Script: "sleep 1000 & echo $! > " + pidFile + ".tmp; mv " + pidFile + ".tmp " + pidFile + "; wait"},
			sdk.Output{Stdout: io.Discard, Stderr: io.Discard})
		stepDone <- err
	}()
	for {
		if _, err := os.Stat(pidFile); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	data, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	sleeper, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(sleeper, syscall.SIGKILL) }) // started by this test
	if err := syscall.Kill(first.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := <-stepDone; err == nil || !strings.Contains(err.Error(), "died during step script") {
		t.Errorf("step error %v; want it to say the plugin died", err)
	}
	// Cleanup of a job prepared by the dead process works in a new one,
	// and kills what the dead one left running.
	if err := sup.Cleanup(ctx, h); err != nil {
		t.Fatalf("cleanup after a restart: %v", err)
	}
	if _, err := os.Stat(h.BuildDir); !os.IsNotExist(err) {
		t.Errorf("build dir %s still there after cleanup (err %v)", h.BuildDir, err)
	}
	for i := 0; alive(sleeper); i++ {
		if i > 100 {
			t.Fatalf("the job's background process %d survived the cleanup", sleeper)
		}
		time.Sleep(50 * time.Millisecond)
	}
	second, err := sup.Instance(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if second.Pid() == first.Pid() || sup.Starts() != 2 {
		t.Errorf("want a second plugin process: pids %d, %d; starts %d", first.Pid(), second.Pid(), sup.Starts())
	}
}

func TestSupervisorRefusedSettingsNameTheKey(t *testing.T) {
	sup := NewSupervisor(shellPlugin(), map[string]any{"no_such_setting": 1}, StartOptions{})
	defer sup.Close()
	_, err := sup.Instance(context.Background())
	if err == nil || !strings.Contains(err.Error(), "no_such_setting") || !strings.Contains(err.Error(), `"shell"`) {
		t.Fatalf("error %v; want it to name the plugin and the key", err)
	}
}

// alive says whether pid runs (a zombie does not count).
func alive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(data, ')')
	return i >= 0 && i+2 < len(data) && data[i+2] != 'Z'
}
