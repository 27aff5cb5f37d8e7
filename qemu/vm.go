package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The files of a job's folder.
const (
	diskFile    = "disk.qcow2"  // the overlay of base_image
	pidFile     = "qemu.pid"    // written by QEMU (-pidfile)
	qemuLogFile = "qemu.log"    // QEMU's own output
	consoleFile = "console.log" // the guest's serial console
)

// vm is a QEMU process this executor started.
type vm struct {
	pid   int
	start uint64 // its start time (see procStat)
	port  int    // the 127.0.0.1 port forwarded to the guest's SSH port
	dir   string // the job's folder
	done  chan struct{}
	err   error // how it ended (cmd.Wait), once done is closed
}

func (v *vm) exited() bool {
	select {
	case <-v.done:
		return true
	default:
		return false
	}
}

// qemuArgs is QEMU's command line for a job's VM (without the program).
func qemuArgs(cfg *config, dir string, port int) []string {
	cpu := "max" // every feature TCG emulates
	if cfg.accel == "kvm" {
		cpu = "host"
	}
	netdev := fmt.Sprintf("user,id=net0,hostfwd=tcp:127.0.0.1:%d-:%d", port, cfg.SSHPort)
	if cfg.IsolateNetwork {
		netdev += ",restrict=on"
	}
	args := []string{
		"-name", "berth-job-" + filepath.Base(dir),
		"-accel", cfg.accel,
		"-cpu", cpu,
		"-smp", strconv.Itoa(cfg.CPUs),
		"-m", strconv.FormatInt(int64(cfg.Memory)>>20, 10) + "M",
		"-nodefaults", "-no-user-config",
		"-display", "none",
		"-serial", "file:" + filepath.Join(dir, consoleFile),
		// The overlay is thrown away with the job: no flush is worth waiting for.
		"-drive", "file=" + filepath.Join(dir, diskFile) + ",if=virtio,format=qcow2,cache=unsafe",
		"-netdev", netdev,
		"-device", "virtio-net-pci,netdev=net0",
		"-pidfile", filepath.Join(dir, pidFile),
	}
	if cfg.Kernel != "" {
		args = append(args, "-kernel", cfg.Kernel)
		if cfg.Initrd != "" {
			args = append(args, "-initrd", cfg.Initrd)
		}
		if cfg.Append != "" {
			args = append(args, "-append", cfg.Append)
		}
	}
	return append(args, cfg.QEMUArgs...)
}

// launch starts QEMU for the job in dir.
//
// Linux sends the parent-death signal when the thread that forked the
// child ends, not the process; Go may end threads. So QEMU is started
// from a goroutine locked to its thread, which stays until QEMU has
// exited: the plugin dying is then the only way the thread ends first.
func launch(cfg *config, dir string, port int) (*vm, error) {
	logf, err := os.OpenFile(filepath.Join(dir, qemuLogFile), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("creating QEMU's log: %w", err)
	}
	cmd := exec.Command(cfg.QEMUPath, qemuArgs(cfg, dir, port)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	v := &vm{port: port, dir: dir, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer logf.Close()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		v.err = cmd.Wait()
		close(v.done)
	}()
	if err := <-started; err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return nil, fmt.Errorf("QEMU (setting qemu_path = %q) was not found: install it (Debian: apt-get install qemu-system-x86) or set qemu_path: %w", cfg.QEMUPath, err)
		}
		return nil, fmt.Errorf("starting QEMU (%s): %w", cfg.QEMUPath, err)
	}
	v.pid = cmd.Process.Pid
	st, _ := readStat(v.pid)
	v.start = st.start
	return v, nil
}

// kill kills the VM (its process group) and waits until QEMU has exited.
// A VM that has exited (and was reaped, so its pid may be reused) is left
// alone.
func (v *vm) kill() error {
	if v.exited() {
		return nil
	}
	if err := syscall.Kill(-v.pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("killing QEMU (pid %d): %w", v.pid, err)
	}
	select {
	case <-v.done:
		return nil
	case <-time.After(killWait):
		return fmt.Errorf("QEMU (pid %d) still runs %s after SIGKILL", v.pid, killWait)
	}
}

// exitReport says how a VM that ended early ended: QEMU's exit, its last
// words and the guest console's.
func (v *vm) exitReport() string {
	how := "exited with status 0"
	if v.err != nil {
		how = "ended: " + v.err.Error()
	}
	msg := fmt.Sprintf("QEMU (pid %d) %s", v.pid, how)
	if out := tail(filepath.Join(v.dir, qemuLogFile), 10); out != "" {
		msg += "; it said: " + out
	}
	if out := tail(filepath.Join(v.dir, consoleFile), 10); out != "" {
		msg += "; the guest's console ended with: " + out
	}
	return msg
}

// tail returns the last lines of a file, on one line, "" when there is
// nothing to read.
func tail(name string, lines int) string {
	b, err := os.ReadFile(name)
	if err != nil {
		return ""
	}
	const maxBytes = 4 << 10
	if len(b) > maxBytes {
		b = b[len(b)-maxBytes:]
	}
	text := strings.ReplaceAll(string(bytes.TrimSpace(b)), "\r", "")
	all := strings.Split(text, "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.TrimSpace(strings.Join(all, " | "))
}

// createOverlay makes the job's qcow2 overlay with base_image as its
// backing file.
func createOverlay(ctx context.Context, cfg *config, dir string) error {
	overlay := filepath.Join(dir, diskFile)
	_, err := runTool(ctx, cfg.QEMUImgPath, "create", "-q", "-f", "qcow2", "-F", cfg.baseFormat, "-b", cfg.BaseImage, overlay)
	if err != nil {
		return fmt.Errorf("creating the job's overlay of %s: %w", cfg.BaseImage, err)
	}
	return nil
}

// imageFormat asks qemu-img for a disk image's format. -U: VMs may be
// using the image.
func imageFormat(ctx context.Context, qemuImg, image string) (string, error) {
	if _, err := os.Stat(image); err != nil {
		return "", err
	}
	out, err := runTool(ctx, qemuImg, "info", "-U", "--output=json", image)
	if err != nil {
		return "", fmt.Errorf("reading the image %s: %w", image, err)
	}
	var info struct {
		Format      string `json:"format"`
		VirtualSize int64  `json:"virtual-size"`
	}
	if err := json.Unmarshal(out, &info); err != nil || info.Format == "" {
		return "", fmt.Errorf("qemu-img info %s printed no format: %.200q", image, out)
	}
	if info.VirtualSize == 0 {
		return "", fmt.Errorf("the image %s is empty (a %s disk of 0 bytes)", image, info.Format)
	}
	return info.Format, nil
}

// runTool runs a program and returns its standard output; the error holds
// what it said on standard error.
func runTool(ctx context.Context, path string, args ...string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		if msg != "" {
			return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", filepath.Base(path), strings.Join(args, " "), err, msg)
		}
		return stdout.Bytes(), fmt.Errorf("%s %s: %w", filepath.Base(path), strings.Join(args, " "), err)
	}
	return stdout.Bytes(), nil
}

// checkTool runs path with a version flag once per path.
func (e *Executor) checkTool(ctx context.Context, setting, path, flag string) error {
	e.mu.Lock()
	ok := e.tools[path]
	e.mu.Unlock()
	if ok {
		return nil
	}
	out, err := runTool(ctx, path, flag)
	if errors.Is(err, exec.ErrNotFound) {
		return fmt.Errorf("%s (setting %s = %q) was not found: install QEMU (Debian: apt-get install qemu-system-x86 qemu-utils) or set %s: %w", filepath.Base(path), setting, path, setting, err)
	}
	if err != nil {
		return fmt.Errorf("setting %s: %w", setting, err)
	}
	first, _, _ := strings.Cut(string(out), "\n")
	e.logger().Debug("qemu: program answers", "setting", setting, "path", path, "version", strings.TrimSpace(first))
	e.mu.Lock()
	e.tools[path] = true
	e.mu.Unlock()
	return nil
}

// freePort returns a TCP port of 127.0.0.1 that nothing listened on a
// moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port on 127.0.0.1 to forward to the VM: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
