package virtualbox

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/berthci/berth/sshexec/sshdtest"
)

// VirtualBox cannot be installed where these tests run (no package, no
// hardware virtualisation), so they drive a stand-in VBoxManage
// (internal/fakevbox, built for each test): it checks every argument
// against VirtualBox's documented syntax and keeps the machines in a JSON
// file, and "booting" a machine starts a real OpenSSH sshd on the port its
// NAT rule forwards. Everything after boot is real.

const baseVM = "berth-base"

// fakeVBox is the stand-in, built into a folder of its own with a base VM
// whose guest logs in a test account.
type fakeVBox struct {
	dir        string
	path       string
	account    *sshdtest.Account
	hostKey    ssh.PublicKey
	knownHosts string
}

// fakeVM is a machine as the stand-in stores it (the fields the tests
// read).
type fakeVM struct {
	Name            string   `json:"name"`
	UUID            string   `json:"uuid"`
	State           string   `json:"state"`
	Snapshots       []string `json:"snapshots,omitempty"`
	CurrentSnapshot string   `json:"current_snapshot,omitempty"`
	NIC1            string   `json:"nic1"`
	Guest           struct {
		SSHDConfig  string `json:"sshd_config"`
		BootDelayMS int    `json:"boot_delay_ms"`
	} `json:"guest"`
	BaseFolder     string `json:"base_folder,omitempty"`
	ClonedFrom     string `json:"cloned_from,omitempty"`
	LinkedSnapshot string `json:"linked_snapshot,omitempty"`
	GuestPid       int    `json:"guest_pid,omitempty"`
}

type fakeState struct {
	VMs []fakeVM `json:"vms"`
}

func newFakeVBox(t *testing.T, bootDelay time.Duration) *fakeVBox {
	t.Helper()
	sshdtest.RequireSSHD(t)
	dir := t.TempDir()
	f := &fakeVBox{dir: dir, path: filepath.Join(dir, "VBoxManage")}
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	if out, err := exec.Command(goTool, "build", "-o", f.path, "github.com/berthci/berth/virtualbox/internal/fakevbox").CombinedOutput(); err != nil {
		t.Fatalf("building the stand-in VBoxManage: %v: %s", err, out)
	}
	f.account = sshdtest.NewAccount(t)
	hostKeyFile, pub := sshdtest.NewHostKey(t, dir, "guest_host_ed25519")
	f.hostKey = pub
	base := fakeVM{
		Name: baseVM, UUID: "5e0b3c1a-0000-4000-8000-000000000001", State: "poweroff",
		Snapshots: []string{"clean"}, CurrentSnapshot: "clean", NIC1: "nat",
	}
	base.Guest.SSHDConfig = f.account.SSHDConfig(hostKeyFile)
	base.Guest.BootDelayMS = int(bootDelay / time.Millisecond)
	f.writeState(t, fakeState{VMs: []fakeVM{base}})
	// The guests answer on a new port each time: their key is known under
	// the base VM's name.
	f.knownHosts = filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(f.knownHosts, []byte(knownhosts.Line([]string{baseVM}, pub)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.powerOffAll(t) })
	return f
}

// settings are executor settings for the stand-in.
func (f *fakeVBox) settings() map[string]any {
	return map[string]any{
		"base_name":        baseVM,
		"base_snapshot":    "clean",
		"vboxmanage_path":  f.path,
		"user":             f.account.User,
		"identity_file":    f.account.ClientKeyFile,
		"known_hosts_file": f.knownHosts,
		"boot_timeout":     "60s",
	}
}

func (f *fakeVBox) state(t *testing.T) fakeState {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(f.dir, "fakevbox.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st fakeState
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func (f *fakeVBox) writeState(t *testing.T, st fakeState) {
	t.Helper()
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.dir, "fakevbox.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// vmNames lists the machines the stand-in has.
func (f *fakeVBox) vmNames(t *testing.T) []string {
	var names []string
	for _, vm := range f.state(t).VMs {
		names = append(names, vm.Name)
	}
	return names
}

// calls are the stand-in's invocations so far, one argument list each.
func (f *fakeVBox) calls(t *testing.T) [][]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(f.dir, "fakevbox.log"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var calls [][]string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var args []string
		if err := json.Unmarshal(sc.Bytes(), &args); err != nil {
			t.Fatalf("the stand-in's log: %v", err)
		}
		calls = append(calls, args)
	}
	return calls
}

// run runs the stand-in directly.
func (f *fakeVBox) run(args ...string) (exitCode int, output string) {
	out, err := exec.Command(f.path, args...).CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		return -1, err.Error()
	}
	return 0, string(out)
}

// powerOffAll stops the guests a failed test left running (the stand-in
// kills the sshd it started and everything below it).
func (f *fakeVBox) powerOffAll(t *testing.T) {
	for _, vm := range f.state(t).VMs {
		if vm.State == "running" {
			if code, out := f.run("controlvm", vm.Name, "poweroff"); code != 0 {
				t.Errorf("powering off %s left by the test: %s", vm.Name, out)
			}
		}
	}
}

// guestProcesses lists the running processes of this stand-in's guests:
// those whose environment holds the mark its guests' sshd sets.
func (f *fakeVBox) guestProcesses() []int {
	prefix := []byte("FAKEVBOX_GUEST=" + filepath.Join(f.dir, "vms") + "/")
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || sshdtest.ProcessGone(pid) {
			continue
		}
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err != nil {
			continue
		}
		for _, kv := range bytes.Split(env, []byte{0}) {
			if bytes.HasPrefix(kv, prefix) {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}
