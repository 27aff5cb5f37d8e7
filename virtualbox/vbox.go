package virtualbox

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// natRuleName is the name of the port-forwarding rule to the guest's SSH
// server.
const natRuleName = "berth-ssh"

// vbox runs VBoxManage with args and returns its standard output.
func (e *Executor) vbox(ctx context.Context, cfg *config, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, cfg.VBoxManagePath, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	e.logger().Debug("virtualbox: running VBoxManage", "args", args)
	err := cmd.Run()
	if errors.Is(err, exec.ErrNotFound) {
		return "", fmt.Errorf("VBoxManage (setting vboxmanage_path = %q) was not found: install VirtualBox or set vboxmanage_path: %w", cfg.VBoxManagePath, err)
	}
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		return stdout.String(), fmt.Errorf("VBoxManage %s: %w: %s", strings.Join(args, " "), err, msg)
	}
	return stdout.String(), nil
}

// listVMs lists the names of the registered VMs ("list vms" prints
// `"name" {uuid}` lines).
func (e *Executor) listVMs(ctx context.Context, cfg *config) ([]string, error) {
	out, err := e.vbox(ctx, cfg, "list", "vms")
	if err != nil {
		return nil, err
	}
	var names []string
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		i := strings.LastIndex(line, " {")
		if !strings.HasPrefix(line, `"`) || i < 2 || line[i-1] != '"' {
			continue
		}
		names = append(names, line[1:i-1])
	}
	return names, nil
}

// vmInfo reads "showvminfo --machinereadable": key="value" lines.
func (e *Executor) vmInfo(ctx context.Context, cfg *config, vm string) (map[string]string, error) {
	out, err := e.vbox(ctx, cfg, "showvminfo", vm, "--machinereadable")
	if err != nil {
		return nil, err
	}
	info := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		if u, err := strconv.Unquote(v); err == nil {
			v = u
		}
		info[strings.Trim(k, `"`)] = v
	}
	return info, nil
}

// baseSnapshot is the snapshot linked clones are made from: base_snapshot,
// or the base VM's current one.
func (e *Executor) baseSnapshot(ctx context.Context, cfg *config) (string, error) {
	if cfg.BaseSnapshot != "" {
		return cfg.BaseSnapshot, nil
	}
	info, err := e.vmInfo(ctx, cfg, cfg.BaseName)
	if err != nil {
		return "", fmt.Errorf("reading the base VM %q: %w", cfg.BaseName, err)
	}
	snap := info["CurrentSnapshotName"]
	if snap == "" {
		return "", fmt.Errorf("the base VM %q has no snapshot to make linked clones from: take one (VBoxManage snapshot %s take <name>), or set disable_snapshots", cfg.BaseName, cfg.BaseName)
	}
	return snap, nil
}

// createVM clones the base as name, forwards a free 127.0.0.1 port to the
// guest's port 22 and starts the VM; it returns the port.
func (e *Executor) createVM(ctx context.Context, cfg *config, name string) (int, error) {
	clone := []string{"clonevm", cfg.BaseName, "--mode", "machine", "--name", name, "--register"}
	if !cfg.DisableSnapshots {
		snap, err := e.baseSnapshot(ctx, cfg)
		if err != nil {
			return 0, err
		}
		clone = append(clone, "--snapshot", snap, "--options", "link")
	}
	if cfg.BaseFolder != "" {
		clone = append(clone, "--basefolder", cfg.BaseFolder)
	}
	e.cloneMu.Lock()
	_, err := e.vbox(ctx, cfg, clone...)
	e.cloneMu.Unlock()
	if err != nil {
		return 0, fmt.Errorf("cloning the base VM %q: %w", cfg.BaseName, err)
	}
	port, err := freePort()
	if err != nil {
		return 0, err
	}
	rule := fmt.Sprintf("%s,tcp,127.0.0.1,%d,,22", natRuleName, port)
	if _, err := e.vbox(ctx, cfg, "modifyvm", name, "--natpf1", rule); err != nil {
		return 0, fmt.Errorf("forwarding port %d to the SSH server of VM %q: %w", port, name, err)
	}
	if _, err := e.vbox(ctx, cfg, "startvm", name, "--type", cfg.StartType); err != nil {
		return 0, fmt.Errorf("starting VM %q: %w", name, err)
	}
	return port, nil
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

// States of a VM ("VMState" of showvminfo) in which it must be powered
// off before it can be deleted.
var activeStates = []string{"running", "paused", "stuck", "starting", "restoring", "saving", "stopping", "livesnapshotting", "teleporting"}

// removeVM powers the VM off if it runs and deletes it with its disks. A
// VM that is not there is fine.
func (e *Executor) removeVM(ctx context.Context, cfg *config, name string) error {
	vms, err := e.listVMs(ctx, cfg)
	if err != nil {
		return err
	}
	found := false
	for _, n := range vms {
		found = found || n == name
	}
	if !found {
		return nil
	}
	info, err := e.vmInfo(ctx, cfg, name)
	if err != nil {
		return fmt.Errorf("removing VM %q: %w", name, err)
	}
	for _, s := range activeStates {
		if info["VMState"] == s {
			if _, err := e.vbox(ctx, cfg, "controlvm", name, "poweroff"); err != nil {
				return fmt.Errorf("removing VM %q: %w", name, err)
			}
			break
		}
	}
	// After a power-off VirtualBox may hold the VM's session lock a moment
	// longer.
	for attempt := 1; ; attempt++ {
		_, err := e.vbox(ctx, cfg, "unregistervm", name, "--delete")
		if err == nil {
			return nil
		}
		if attempt == 10 || ctx.Err() != nil {
			return fmt.Errorf("removing VM %q: %w", name, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
}
