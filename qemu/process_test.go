package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/sshexec/sshdtest"
)

// Tests with real QEMU processes whose guests never boot (a blank disk, no
// kernel: the firmware finds nothing to start): what Prepare does when a
// guest does not come up, that a VM dies with its plugin, and that
// leftovers of a dead berth are removed. No test guest is needed.

// pluginEnv makes the test binary stand for a plugin process (see
// TestMain): its value is the settings, as JSON.
const pluginEnv = "BERTH_QEMU_TEST_PLUGIN"

func TestMain(m *testing.M) {
	if raw := os.Getenv(pluginEnv); raw != "" {
		os.Exit(standInPlugin(raw))
	}
	os.Exit(m.Run())
}

// standInPlugin is a plugin process that owns its jobs itself (as if it
// were berth) and prepares one whose VM never boots: it waits in Prepare
// until it is killed.
func standInPlugin(raw string) int {
	var settings map[string]any
	if err := json.Unmarshal([]byte(raw), &settings); err != nil {
		fmt.Fprintln(os.Stderr, "stand-in plugin: settings:", err)
		return 2
	}
	e := New(WithOwnerPID(os.Getpid()))
	ctx := context.Background()
	if err := e.Configure(ctx, settings); err != nil {
		fmt.Fprintln(os.Stderr, "stand-in plugin: Configure:", err)
		return 2
	}
	_, err := e.Prepare(ctx, sdk.Job{ID: "orphan", Shell: "sh"})
	fmt.Fprintln(os.Stderr, "stand-in plugin: Prepare returned:", err)
	return 3
}

func TestConfigure(t *testing.T) {
	requireQEMU(t)
	t.Parallel()
	notImage := filepath.Join(t.TempDir(), "empty")
	must(t, os.WriteFile(notImage, nil, 0o600), "writing an empty file")
	tests := []struct {
		name    string
		change  map[string]any
		wantErr string
	}{
		{"good", nil, ""},
		{"base_image missing", map[string]any{"base_image": "/nonexistent/base.qcow2"}, `setting "base_image": stat /nonexistent/base.qcow2`},
		{"base_image empty", map[string]any{"base_image": notImage}, `setting "base_image": the image ` + notImage + ` is empty`},
		{"qemu_path missing", map[string]any{"qemu_path": "berth-no-such-qemu"}, `qemu-system-x86_64 (setting qemu_path = "berth-no-such-qemu") was not found`},
		{"qemu_img_path not qemu-img", map[string]any{"qemu_img_path": "false"}, `setting qemu_img_path: false --version: exit status 1`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			raw := blankSettings(t)
			for k, v := range tt.change {
				raw[k] = v
			}
			err := New(WithLogger(testLogger(t))).Configure(t.Context(), raw)
			if (tt.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), strings.ReplaceAll(tt.wantErr, "qemu-system-x86_64", "berth-no-such-qemu"))) {
				t.Errorf("Configure: %v; want error %q", err, tt.wantErr)
			}
		})
	}
}

// A guest that does not come up fails Prepare with what QEMU and the
// guest's console said, and leaves neither a VM nor a job folder.
func TestBootFailures(t *testing.T) {
	requireQEMU(t)
	t.Parallel()
	notKernel := filepath.Join(t.TempDir(), "vmlinuz")
	must(t, os.WriteFile(notKernel, []byte("not a kernel\n"), 0o600), "writing a file that is not a kernel")
	tests := []struct {
		name     string
		change   map[string]any
		wantErrs []string
	}{
		{"the guest never answers", map[string]any{"boot_timeout": "3s"},
			[]string{"the guest's SSH server did not answer on 127.0.0.1:", "within boot_timeout (3s)"}},
		{"QEMU refuses its arguments", map[string]any{"qemu_args": []string{"-device", "berth-no-such-device"}},
			[]string{"the VM ended while the guest booted: QEMU (pid", "exit status 1", "berth-no-such-device"}},
		{"the kernel cannot be loaded", map[string]any{"kernel": notKernel},
			[]string{"the VM ended while the guest booted: QEMU (pid", "exit status 1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			raw := blankSettings(t)
			for k, v := range tt.change {
				raw[k] = v
			}
			e := configured(t, raw)
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			_, err := e.Prepare(ctx, sdk.Job{ID: "no-boot", Shell: "sh"})
			t.Logf("Prepare: %v", err)
			for _, want := range tt.wantErrs {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("Prepare: %v; want an error saying %q", err, want)
				}
			}
			overlayDir := raw["overlay_dir"].(string)
			if left := qemuProcesses(overlayDir); len(left) > 0 {
				t.Errorf("QEMU processes still run after the failed Prepare: %v", left)
				for _, pid := range left {
					_ = killProcess(pid)
				}
			}
			if entries, _ := os.ReadDir(overlayDir); len(entries) > 0 {
				t.Errorf("overlay_dir holds %v after the failed Prepare, want nothing", entries)
			}
			must(t, e.Cleanup(ctx, sdk.Handle{JobID: "no-boot"}), "Cleanup after the failed Prepare")
		})
	}
}

// A VM dies with the plugin that started it, however the plugin dies; the
// job folder it leaves is removed when the executor next starts, once the
// berth that owned it is gone.
func TestNoVMOutlivesPlugin(t *testing.T) {
	requireQEMU(t)
	t.Parallel()
	raw := blankSettings(t)
	raw["boot_timeout"] = "10m"
	overlayDir := raw["overlay_dir"].(string)
	settings, err := json.Marshal(raw)
	must(t, err, "encoding the settings")
	plugin := exec.Command(os.Args[0], "-test.run=^$")
	plugin.Env = append(os.Environ(), pluginEnv+"="+string(settings))
	out := sshdtest.NewWatch("")
	plugin.Stdout, plugin.Stderr = out, out
	must(t, plugin.Start(), "starting the stand-in plugin")
	exited := make(chan struct{})
	go func() { _ = plugin.Wait(); close(exited) }()
	defer func() {
		_ = plugin.Process.Kill()
		<-exited
	}()

	// Its VM: the pid QEMU wrote into the job's folder.
	var vmPid int
	deadline := time.Now().Add(2 * time.Minute)
	for vmPid == 0 {
		select {
		case <-exited:
			t.Fatalf("the stand-in plugin exited before its VM started: %s", out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no VM pid file in %s within 2 minutes; the plugin said: %s", overlayDir, out)
		}
		files, _ := filepath.Glob(filepath.Join(overlayDir, "*", pidFile))
		for _, f := range files {
			b, err := os.ReadFile(f)
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && perr == nil && isQEMUOf(pid, 0, filepath.Dir(f)) {
				vmPid = pid
			}
		}
		time.Sleep(50 * time.Millisecond)
	}

	must(t, plugin.Process.Signal(syscall.SIGKILL), "killing the stand-in plugin")
	<-exited
	if !waitGone(vmPid, 30*time.Second) {
		t.Errorf("the VM (QEMU pid %d) still runs 30 s after its plugin was killed", vmPid)
		_ = killProcess(vmPid)
	}
	if entries, _ := os.ReadDir(overlayDir); len(entries) != 1 {
		t.Fatalf("overlay_dir holds %v after the plugin died, want its job's folder", entries)
	}
	configured(t, raw)
	if entries, _ := os.ReadDir(overlayDir); len(entries) != 0 {
		t.Errorf("overlay_dir holds %v after the executor started again, want nothing (the owner is dead)", entries)
	}
}

// When the executor is first configured for an overlay_dir it removes the
// job folders of owners that no longer run, killing their VMs if they
// still run; it leaves those of running owners, what is not a job folder,
// and processes that are not the folder's QEMU.
func TestLeftoversRemovedAtStart(t *testing.T) {
	requireQEMU(t)
	t.Parallel()
	raw := blankSettings(t)
	overlayDir := raw["overlay_dir"].(string)
	ended := exec.Command("true")
	must(t, ended.Run(), "running true")
	dead := fmt.Sprintf("%d.1", ended.Process.Pid)
	live := ownerOf(os.Getppid()).String()
	folder := func(name string) string {
		dir := filepath.Join(overlayDir, name)
		must(t, os.Mkdir(dir, 0o700), "making %s", dir)
		return dir
	}
	// A VM that outlived its berth (as if the parent-death signal had not
	// come): a QEMU of the folder, paused, without a guest.
	startVM := func(dir string) int {
		cmd := exec.Command("qemu-system-x86_64", "-machine", "none", "-S", "-nodefaults", "-display", "none",
			"-pidfile", filepath.Join(dir, pidFile))
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		must(t, cmd.Start(), "starting QEMU")
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		t.Cleanup(func() {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		})
		deadline := time.Now().Add(time.Minute)
		for {
			if b, err := os.ReadFile(filepath.Join(dir, pidFile)); err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(cmd.Process.Pid) {
				return cmd.Process.Pid
			}
			if time.Now().After(deadline) {
				t.Fatalf("QEMU wrote no pid file in %s within a minute", dir)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	orphanDir := folder(dead + "-job1")
	orphan := startVM(orphanDir)
	liveDir := folder(live + "-job2")
	running := startVM(liveDir)
	// A pid file naming a process that is not its folder's QEMU: this test.
	strayDir := folder(dead + "-job3")
	must(t, os.WriteFile(filepath.Join(strayDir, pidFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600), "writing a pid file")
	folder(dead + "-job4") // nothing but the folder
	folder("not-a-job")

	configured(t, raw)

	if !waitGone(orphan, 10*time.Second) {
		t.Errorf("the VM of a dead owner (QEMU pid %d) still runs", orphan)
	}
	if !alive(running) {
		t.Errorf("the VM of a running owner (QEMU pid %d) was killed", running)
	}
	var names []string
	entries, err := os.ReadDir(overlayDir)
	must(t, err, "reading overlay_dir")
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{live + "-job2", "not-a-job"}; strings.Join(names, " ") != strings.Join(want, " ") {
		t.Errorf("overlay_dir holds %v after Configure, want %v", names, want)
	}
	if _, err := os.Stat(liveDir); err != nil {
		t.Errorf("the folder of a running owner: %v", err)
	}
	if _, err := os.Stat(orphanDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the folder of a dead owner: %v, want it gone", err)
	}
}
