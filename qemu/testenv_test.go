package qemu

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berthci/berth/sdk"
)

// The tests start real QEMU processes. Those that need a guest that boots
// use the one test/qemu/build-guest.sh builds from Debian's packages
// (Debian's kernel, busybox, bash, GNU tar and OpenSSH's sshd on an ext4
// base image), found through $BERTH_QEMU_GUEST; .ci/setup-qemu.sh builds
// it (once: it is cached outside the clone) and sets the variable.

const installHint = "Debian: apt-get install qemu-system-x86 qemu-utils; .ci/setup-qemu.sh installs them"

// requireQEMU skips the test when QEMU is not installed.
func requireQEMU(t testing.TB) {
	t.Helper()
	for _, p := range []string{"qemu-system-x86_64", "qemu-img"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("%s is not installed (%s)", p, installHint)
		}
	}
}

// guest is the test guest that build-guest.sh made.
type guest struct {
	dir     string
	release string // its kernel's uname -r
}

func (g guest) file(name string) string { return filepath.Join(g.dir, name) }

// requireGuest skips the test when no test guest was built; a guest
// folder named but incomplete fails it.
func requireGuest(t testing.TB) guest {
	t.Helper()
	requireQEMU(t)
	dir := os.Getenv("BERTH_QEMU_GUEST")
	if dir == "" {
		t.Skip("BERTH_QEMU_GUEST is not set: build the test guest with `bash test/qemu/build-guest.sh` " +
			"(needs Debian's qemu-system-x86 qemu-utils busybox-static openssh-server e2fsprogs cpio) and set " +
			"BERTH_QEMU_GUEST to the folder it prints; .ci/setup-qemu.sh does both")
	}
	g := guest{dir: dir}
	for _, f := range []string{"vmlinuz", "initrd.img", "base.qcow2", "append", "id_ed25519", "known_hosts", "kernel-version"} {
		if _, err := os.Stat(g.file(f)); err != nil {
			t.Fatalf("BERTH_QEMU_GUEST=%s is not a complete test guest (%v): run test/qemu/build-guest.sh again", dir, err)
		}
	}
	g.release = strings.TrimSpace(readFile(t, g.file("kernel-version")))
	return g
}

// settings configure the executor for the test guest, with a fresh
// overlay_dir.
func (g guest) settings(t testing.TB) map[string]any {
	return map[string]any{
		"base_image":       g.file("base.qcow2"),
		"kernel":           g.file("vmlinuz"),
		"initrd":           g.file("initrd.img"),
		"append":           strings.TrimSpace(readFile(t, g.file("append"))),
		"memory":           "256m",
		"cpus":             1,
		"isolate_network":  true,
		"overlay_dir":      t.TempDir(),
		"ssh_user":         "ci",
		"identity_file":    g.file("id_ed25519"),
		"known_hosts_file": g.file("known_hosts"),
		"host_key_alias":   "berth-test-guest",
		"boot_timeout":     "5m",
	}
}

func readFile(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// testLogger logs to the test's log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func configured(t testing.TB, settings map[string]any, opts ...Option) *Executor {
	t.Helper()
	e := New(append([]Option{WithLogger(testLogger(t))}, opts...)...)
	if err := e.Configure(t.Context(), settings); err != nil {
		t.Fatalf("Configure: %v", err)
	}
	return e
}

// emptyImage makes a small blank qcow2 disk: a VM with it and no kernel
// runs its firmware and never answers on SSH.
func emptyImage(t testing.TB) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "blank.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", p, "16M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	return p
}

// blankSettings configure the executor for a VM that never boots.
func blankSettings(t testing.TB) map[string]any {
	return map[string]any{
		"base_image":                       emptyImage(t),
		"memory":                           "64m",
		"accel":                            "tcg",
		"isolate_network":                  true,
		"overlay_dir":                      t.TempDir(),
		"ssh_user":                         "nobody",
		"ssh_password":                     "x",
		"disable_strict_host_key_checking": true,
	}
}

// qemuProcesses lists the running processes whose command line names
// dir.
func qemuProcesses(dir string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() || !alive(pid) {
			continue
		}
		cmdline, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && bytes.Contains(cmdline, []byte(dir+"/")) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// waitGone waits (bounded) until pid no longer runs.
func waitGone(pid int, within time.Duration) bool {
	deadline := time.Now().Add(within)
	for alive(pid) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// state reads a handle's state.
func state(t testing.TB, h sdk.Handle) jobState {
	t.Helper()
	st, err := decodeState(h)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// run runs a step and returns its exit code and output.
func run(ctx context.Context, e *Executor, h sdk.Handle, shell, script string) (int, string, string, error) {
	var stdout, stderr bytes.Buffer
	code, err := e.Run(ctx, h, sdk.Step{Name: "step", Script: script, Shell: shell, GracePeriod: 5 * time.Second},
		sdk.Output{Stdout: &stdout, Stderr: &stderr})
	return code, stdout.String(), stderr.String(), err
}

func must(t testing.TB, err error, what string, args ...any) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", fmt.Sprintf(what, args...), err)
	}
}
