package bwrapexec_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthci/berth/examples/custom-executor/bwrapexec"
	"github.com/berthci/berth/sdk"
)

// newExecutor returns a configured executor whose builds live in a test
// directory.
func newExecutor(t *testing.T, extra map[string]any) *bwrapexec.Executor {
	t.Helper()
	skipWithoutBwrap(t)
	e := bwrapexec.New()
	settings := map[string]any{"builds_dir": t.TempDir()}
	for k, v := range extra {
		settings[k] = v
	}
	if err := e.Configure(context.Background(), settings); err != nil {
		t.Fatal(err)
	}
	return e
}

// skipWithoutBwrap skips the test where bwrap cannot build a sandbox.
func skipWithoutBwrap(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("bwrap"); err != nil {
		t.Skip("install bubblewrap (apt-get install bubblewrap): bwrap is not in PATH")
	}
	if out, err := exec.Command("bwrap", "--unshare-all", "--ro-bind", "/", "/", "--", "true").CombinedOutput(); err != nil {
		t.Skipf("install bubblewrap (apt-get install bubblewrap): bwrap cannot create namespaces here: %s: %v", bytes.TrimSpace(out), err)
	}
}

func prepare(t *testing.T, e *bwrapexec.Executor, id string) sdk.Handle {
	t.Helper()
	h, err := e.Prepare(context.Background(), sdk.Job{ID: id, Shell: "bash"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.Cleanup(context.Background(), h); err != nil {
			t.Error(err)
		}
	})
	return h
}

// syncBuffer is an output writer safe for concurrent use.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func run(t *testing.T, e *bwrapexec.Executor, h sdk.Handle, script string) (string, int) {
	t.Helper()
	var out syncBuffer
	code, err := e.Run(context.Background(), h, sdk.Step{Name: "script", Shell: "bash", Script: script}, sdk.Output{Stdout: &out, Stderr: &out})
	if err != nil {
		t.Fatalf("Run: %v (output: %s)", err, out.String())
	}
	return out.String(), code
}

func TestSandbox(t *testing.T) {
	e := newExecutor(t, nil)
	h := prepare(t, e, "sandbox")
	if h.BuildDir != bwrapexec.BuildDir {
		t.Errorf("BuildDir %q, want %q", h.BuildDir, bwrapexec.BuildDir)
	}
	hostTmp, err := os.CreateTemp("", "berth-bwrap-host-")
	if err != nil {
		t.Fatal(err)
	}
	hostTmp.Close()
	defer os.Remove(hostTmp.Name())
	t.Setenv("BERTH_SECRET_OF_THE_HOST", "x")

	checks := []struct{ name, script string }{
		{"working directory", `test "$PWD" = /builds/job`},
		{"clean environment", `test -z "${BERTH_SECRET_OF_THE_HOST-}" && test "$HOME" = /tmp`},
		{"/usr read-only", `! touch /usr/berth-test 2>/dev/null`},
		{"/etc read-only", `! touch /etc/berth-test 2>/dev/null`},
		{"no remount", `! mount -o remount,bind,rw /usr 2>/dev/null`},
		{"private /tmp", `test ! -e ` + hostTmp.Name() + ` && touch /tmp/x`},
		{"build dir writable", `echo hi > made-inside && test "$(cat made-inside)" = hi`},
		{"no capabilities", `grep -Eq '^CapEff:[[:space:]]+0+$' /proc/self/status`},
		{"no other builds", `test "$(ls /builds)" = job`},
		{"script on disk", `test -r "$0"`},
	}
	for _, ns := range []string{"pid", "mnt", "user", "ipc", "uts", "net"} {
		checks = append(checks, struct{ name, script string }{
			"own " + ns + " namespace", `test "$(readlink /proc/self/ns/` + ns + `)" != "` + nsLink(t, ns) + `"`,
		})
	}
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			if out, code := run(t, e, h, "set -e\n"+c.script+"\n"); code != 0 {
				t.Errorf("%s: exit code %d, output %q", c.script, code, out)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(hostDir(t, h), "made-inside")); err != nil {
		t.Errorf("file made in the sandbox is not in the host's build directory: %v", err)
	}
	if out, code := run(t, e, h, "echo out; echo err >&2; exit 7"); code != 7 || out != "out\nerr\n" {
		t.Errorf("got exit code %d and output %q, want 7 and out, err", code, out)
	}
}

func TestNetworkSetting(t *testing.T) {
	e := newExecutor(t, map[string]any{"network": true})
	h := prepare(t, e, "network")
	if out, code := run(t, e, h, `test "$(readlink /proc/self/ns/net)" = "`+nsLink(t, "net")+`"`); code != 0 {
		t.Errorf("with network = true the sandbox has its own network namespace: %s", out)
	}
}

func nsLink(t *testing.T, ns string) string {
	t.Helper()
	l, err := os.Readlink("/proc/self/ns/" + ns)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// hostDir reads the host-side build directory from the handle.
func hostDir(t *testing.T, h sdk.Handle) string {
	t.Helper()
	var st struct {
		HostDir string `json:"host_dir"`
	}
	if err := json.Unmarshal(h.State, &st); err != nil {
		t.Fatal(err)
	}
	return st.HostDir
}

func TestLargeScript(t *testing.T) {
	e := newExecutor(t, nil)
	h := prepare(t, e, "large")
	var script strings.Builder
	for i := range 20000 {
		fmt.Fprintf(&script, "n=%d\n", i)
	}
	script.WriteString("echo $n\n")
	if out, code := run(t, e, h, script.String()); code != 0 || out != "19999\n" {
		t.Errorf("exit code %d, output %q", code, out)
	}
}

// readyWriter cancels the step once the script printed its PID namespace.
type readyWriter struct {
	syncBuffer
	cancel context.CancelFunc
	once   sync.Once
}

func (w *readyWriter) Write(p []byte) (int, error) {
	n, err := w.syncBuffer.Write(p)
	if strings.Contains(w.String(), "ready\n") {
		w.once.Do(w.cancel)
	}
	return n, err
}

func TestCancel(t *testing.T) {
	tests := []struct {
		name, script string
		grace        time.Duration
		want         int
	}{
		// The trap runs: SIGTERM came first, and after it the shell ends
		// with its own code.
		{"graceful", `trap 'echo got TERM > trapped; exit 3' TERM
sleep 1000 & setsid sleep 1000 & readlink /proc/self/ns/pid; echo ready; wait`, time.Hour, 3},
		// Nothing stops on SIGTERM: SIGKILL after the grace period.
		{"killed", `trap '' TERM
sh -c 'trap "" TERM; sleep 1000' & readlink /proc/self/ns/pid; echo ready; wait; wait`, time.Millisecond, 137},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newExecutor(t, nil)
			h := prepare(t, e, "cancel-"+strconv.Itoa(i))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			out := &readyWriter{cancel: cancel}
			code, err := e.Run(ctx, h, sdk.Step{Name: "script", Shell: "bash", Script: tt.script, GracePeriod: tt.grace}, sdk.Output{Stdout: out, Stderr: out})
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Run error %v, want context.Canceled", err)
			}
			if code != tt.want {
				t.Errorf("exit code %d, want %d (output %q)", code, tt.want, out.String())
			}
			ns, _, _ := strings.Cut(out.String(), "\n")
			if left := processesIn(t, ns); len(left) > 0 {
				t.Errorf("processes of the step still run: %v", left)
			}
			if tt.name == "graceful" {
				if _, err := os.Stat(filepath.Join(hostDir(t, h), "trapped")); err != nil {
					t.Errorf("the script's TERM trap did not run: %v", err)
				}
			}
		})
	}
}

// TestCleanupKillsRunningStep: Cleanup while a step runs ends the step.
func TestCleanupKillsRunningStep(t *testing.T) {
	e := newExecutor(t, nil)
	h, err := e.Prepare(context.Background(), sdk.Job{ID: "cleanup-running"})
	if err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	out := &readyWriter{cancel: func() { close(ready) }}
	type result struct {
		code int
		err  error
	}
	done := make(chan result, 1)
	go func() {
		code, err := e.Run(context.Background(), h, sdk.Step{Name: "script", Shell: "sh", Script: "readlink /proc/self/ns/pid; echo ready; sleep 1000"}, sdk.Output{Stdout: out, Stderr: out})
		done <- result{code, err}
	}()
	select {
	case <-ready:
	case r := <-done:
		t.Fatalf("the step ended before Cleanup: %d, %v, output %q", r.code, r.err, out.String())
	}
	if err := e.Cleanup(context.Background(), h); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || r.code != 137 {
		t.Errorf("Run ended with %d, %v; want 137 (killed)", r.code, r.err)
	}
	ns, _, _ := strings.Cut(out.String(), "\n")
	if left := processesIn(t, ns); len(left) > 0 {
		t.Errorf("processes of the step still run: %v", left)
	}
}

// processesIn lists the processes of the PID namespace link ("pid:[N]")
// that have not ended.
func processesIn(t *testing.T, link string) []int {
	t.Helper()
	if !strings.HasPrefix(link, "pid:[") {
		t.Fatalf("the script did not print its PID namespace: %q", link)
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, d := range entries {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		l, err := os.Readlink("/proc/" + d.Name() + "/ns/pid")
		stat, _ := os.ReadFile("/proc/" + d.Name() + "/stat")
		fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if err == nil && l == link && len(fields) > 0 && fields[0] != "Z" {
			pids = append(pids, pid) // a zombie has ended: it only waits to be reaped
		}
	}
	return pids
}

func TestCleanup(t *testing.T) {
	e := newExecutor(t, nil)
	h, err := e.Prepare(context.Background(), sdk.Job{ID: "weird/../id"})
	if err != nil {
		t.Fatal(err)
	}
	dir := hostDir(t, h)
	// Read-only directories (which only stop Cleanup when not run as root).
	if out, code := run(t, e, h, "mkdir -p ro/sub && touch ro/sub/f && chmod 555 ro/sub ro"); code != 0 {
		t.Fatalf("making read-only directories: exit code %d, output %q", code, out)
	}
	if err := e.Cleanup(context.Background(), sdk.Handle{JobID: h.JobID}); err != nil {
		t.Fatalf("Cleanup with only the job ID: %v", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("build directory %s still there: %v", dir, err)
	}
	if err := e.Cleanup(context.Background(), h); err != nil {
		t.Errorf("second Cleanup: %v", err)
	}
	if err := e.Cleanup(context.Background(), sdk.Handle{}); err == nil {
		t.Errorf("Cleanup of a handle without a job ID succeeded; it must not touch builds_dir")
	}
	if _, err := os.Stat(filepath.Dir(dir)); err != nil {
		t.Errorf("builds_dir is gone: %v", err)
	}
	if _, err := e.Run(context.Background(), h, sdk.Step{Script: "true"}, sdk.Output{Stdout: io.Discard, Stderr: io.Discard}); !errors.Is(err, sdk.ErrNotFound) {
		t.Errorf("Run after Cleanup: %v, want sdk.ErrNotFound", err)
	}
}

// TestConfigure checks the executor's own checks of its settings; the
// conformance suite covers unknown keys and wrong types.
func TestConfigure(t *testing.T) {
	e := bwrapexec.New()
	for _, tt := range []struct {
		settings map[string]any
		want     string
	}{
		{map[string]any{"builds_dir": "relative"}, `"builds_dir" must be an absolute path`},
		{map[string]any{"extra_ro_binds": []string{"opt"}}, `"opt" must be an absolute path`},
		{map[string]any{"extra_ro_binds": []string{"/no/such/path"}}, "/no/such/path"},
	} {
		if err := e.Configure(context.Background(), tt.settings); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Configure(%v) = %v, want an error containing %s", tt.settings, err, tt.want)
		}
	}
}
