package qemu

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
)

// kvmProbe is what decides whether KVM can run a stock guest: the device,
// the CPU's flags, and the ioctl that asks the device its API version.
type kvmProbe struct {
	device     string
	cpuinfo    string
	apiVersion func(f *os.File) (int, error)
}

func systemKVM() kvmProbe {
	return kvmProbe{device: "/dev/kvm", cpuinfo: "/proc/cpuinfo", apiVersion: kvmAPIVersion}
}

// kvmGetAPIVersion is the ioctl KVM_GET_API_VERSION (_IO(0xAE, 0x00)).
const kvmGetAPIVersion = 0xAE00

// kvmStableAPI is the only KVM API version there has ever been.
const kvmStableAPI = 12

func kvmAPIVersion(f *os.File) (int, error) {
	r, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), kvmGetAPIVersion, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}

// device says whether the KVM device opens and speaks the stable API.
func (p kvmProbe) deviceWorks() error {
	f, err := os.OpenFile(p.device, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("%s cannot be opened for reading and writing: %w", p.device, err)
	}
	defer f.Close()
	v, err := p.apiVersion(f)
	if err != nil {
		return fmt.Errorf("%s does not answer KVM_GET_API_VERSION: %w", p.device, err)
	}
	if v != kvmStableAPI {
		return fmt.Errorf("%s speaks KVM API version %d, not %d", p.device, v, kvmStableAPI)
	}
	return nil
}

// usable returns nil when KVM can run a stock guest here, or why not. It is
// conservative: besides a working device, the CPU must show hardware
// virtualisation (vmx or svm). Without it the device is a software KVM
// (such as PVM in some nested sandboxes) under which stock guest kernels
// hang at boot.
func (p kvmProbe) usable() error {
	if err := p.deviceWorks(); err != nil {
		return err
	}
	info, err := os.ReadFile(p.cpuinfo)
	if err != nil {
		return fmt.Errorf("reading the CPU's flags: %w", err)
	}
	if !hasVirtualisation(info) {
		return fmt.Errorf("the CPU has no hardware virtualisation (no vmx or svm flag in %s), so %s is a software KVM that stock guest kernels hang under", p.cpuinfo, p.device)
	}
	return nil
}

// hasVirtualisation says whether a flags line of /proc/cpuinfo names vmx
// (Intel VT-x) or svm (AMD-V).
func hasVirtualisation(cpuinfo []byte) bool {
	sc := bufio.NewScanner(bytes.NewReader(cpuinfo))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(key) != "flags" {
			continue
		}
		flags := strings.Fields(value)
		if slices.Contains(flags, "vmx") || slices.Contains(flags, "svm") {
			return true
		}
	}
	return false
}

// chooseAccel turns the accel setting into QEMU's accelerator.
func (e *Executor) chooseAccel(setting string) (string, error) {
	switch setting {
	case "tcg":
		return "tcg", nil
	case "kvm":
		if err := e.kvm.deviceWorks(); err != nil {
			return "", fmt.Errorf("setting \"accel\" is kvm, but %w", err)
		}
		return "kvm", nil
	}
	if err := e.kvm.usable(); err != nil {
		e.logger().Info("qemu: KVM is not usable here; VMs run under TCG (software emulation, much slower)", "reason", err.Error())
		return "tcg", nil
	}
	return "kvm", nil
}
