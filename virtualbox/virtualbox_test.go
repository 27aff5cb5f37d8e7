package virtualbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/sdk/sdktest"
	"github.com/berthci/berth/sshexec"
	"github.com/berthci/berth/sshexec/sshdtest"
)

// The conformance suite against the stand-in VBoxManage (see fake_test.go):
// every job gets its own clone, booted as a real sshd. The guest is this
// machine, but the suite is not told so (no LocalProcesses): a deleted VM
// would take its build directory with it, a stand-in's does not.
func TestConformance(t *testing.T) {
	t.Parallel()
	f := newFakeVBox(t, 200*time.Millisecond)
	sdktest.Run(t, func(t *testing.T) sdk.Executor { return New() }, sdktest.WithSettings(f.settings()))
	if names := f.vmNames(t); !slices.Equal(names, []string{baseVM}) {
		t.Errorf("VMs left after the suite: %v, want only the base %s", names, baseVM)
	}
	if left := f.guestProcesses(); len(left) > 0 {
		t.Errorf("processes of the guests still run after the suite: %v", left)
	}
}

func configured(t *testing.T, settings map[string]any, opts ...Option) *Executor {
	t.Helper()
	e := New(opts...)
	if err := e.Configure(t.Context(), settings); err != nil {
		t.Fatalf("Configure: %v", err)
	}
	return e
}

// The exact VBoxManage command lines of one job, for each way of cloning.
// {vm} is the job's VM and {port} the forwarded port, both checked for
// their form and then put in.
func TestCommandLines(t *testing.T) {
	t.Parallel()
	folder := t.TempDir()
	tests := []struct {
		name     string
		settings map[string]any
		want     []string
	}{
		{
			name:     "linked clone of base_snapshot",
			settings: map[string]any{},
			want: []string{
				"list vms",
				"clonevm berth-base --mode machine --name {vm} --register --snapshot clean --options link",
				"modifyvm {vm} --natpf1 berth-ssh,tcp,127.0.0.1,{port},,22",
				"startvm {vm} --type headless",
			},
		},
		{
			name:     "linked clone of the current snapshot",
			settings: map[string]any{"base_snapshot": ""},
			want: []string{
				"list vms",
				"showvminfo berth-base --machinereadable",
				"clonevm berth-base --mode machine --name {vm} --register --snapshot clean --options link",
				"modifyvm {vm} --natpf1 berth-ssh,tcp,127.0.0.1,{port},,22",
				"startvm {vm} --type headless",
			},
		},
		{
			name:     "full clone in a base folder, gui",
			settings: map[string]any{"disable_snapshots": true, "base_folder": folder, "start_type": "gui"},
			want: []string{
				"list vms",
				"clonevm berth-base --mode machine --name {vm} --register --basefolder " + folder,
				"modifyvm {vm} --natpf1 berth-ssh,tcp,127.0.0.1,{port},,22",
				"startvm {vm} --type gui",
			},
		},
	}
	cleanup := []string{
		"list vms",
		"showvminfo {vm} --machinereadable",
		"controlvm {vm} poweroff",
		"unregistervm {vm} --delete",
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeVBox(t, 0)
			settings := f.settings()
			for k, v := range tt.settings {
				settings[k] = v
			}
			e := configured(t, settings)
			if got, want := join(f.calls(t)), []string{"--version", "list vms"}; !slices.Equal(got, want) {
				t.Errorf("Configure ran\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			ctx := t.Context()
			start := len(f.calls(t))
			h, err := e.Prepare(ctx, sdk.Job{ID: "job/42", Shell: "bash"})
			if err != nil {
				t.Fatalf("Prepare: %v", err)
			}
			var out bytes.Buffer
			code, err := e.Run(ctx, h, sdk.Step{Name: "script", Script: "echo hello from $(hostname)", Shell: "bash"}, sdk.Output{Stdout: &out, Stderr: &out})
			if err != nil || code != 0 || !strings.HasPrefix(out.String(), "hello from") {
				t.Fatalf("Run: exit code %d, error %v, output %q", code, err, out.String())
			}
			guest := 0
			for _, vm := range f.state(t).VMs {
				if vm.Name != baseVM {
					guest = vm.GuestPid
				}
			}
			if err := e.Cleanup(ctx, h); err != nil {
				t.Fatalf("Cleanup: %v", err)
			}
			got := join(f.calls(t)[start:])
			want := append(slices.Clone(tt.want), cleanup...)
			vm, port := placeholders(t, got)
			if !regexp.MustCompile(`^berth-berth-base-[0-9]+\.[0-9]+-job_42-[0-9a-f]{12}$`).MatchString(vm) {
				t.Errorf("the job's VM is named %q, want berth-<base>-<owner>-<job>", vm)
			}
			for i := range want {
				want[i] = strings.NewReplacer("{vm}", vm, "{port}", port).Replace(want[i])
			}
			if !slices.Equal(got, want) {
				t.Errorf("VBoxManage ran\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if names := f.vmNames(t); !slices.Equal(names, []string{baseVM}) {
				t.Errorf("VMs after Cleanup: %v, want only the base", names)
			}
			if guest == 0 || !sshdtest.ProcessGone(guest) {
				t.Errorf("the guest (sshd, pid %d) still runs after Cleanup", guest)
			}
			if left := f.guestProcesses(); len(left) > 0 {
				t.Errorf("processes of the guest still run after Cleanup: %v", left)
			}
		})
	}
}

// join turns argument lists into command lines.
func join(calls [][]string) []string {
	lines := make([]string, len(calls))
	for i, c := range calls {
		lines[i] = strings.Join(c, " ")
	}
	return lines
}

// placeholders finds the job's VM name (from clonevm) and port (from
// modifyvm).
func placeholders(t *testing.T, lines []string) (vm, port string) {
	t.Helper()
	for _, l := range lines {
		if m := regexp.MustCompile(` --name (\S+) `).FindStringSubmatch(l); m != nil && strings.HasPrefix(l, "clonevm ") {
			vm = m[1]
		}
		if m := regexp.MustCompile(`^modifyvm \S+ --natpf1 berth-ssh,tcp,127\.0\.0\.1,([0-9]+),,22$`).FindStringSubmatch(l); m != nil {
			port = m[1]
		}
	}
	if vm == "" || port == "" {
		t.Fatalf("no clonevm or modifyvm line in\n%s", strings.Join(lines, "\n"))
	}
	return vm, port
}

// VMs that a berth no longer running left are removed when the executor
// is first configured; those of a running berth, of another base and
// others are not.
func TestLeftoversRemovedAtStart(t *testing.T) {
	t.Parallel()
	f := newFakeVBox(t, 0)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	// A process that ended: even if its pid is reused, the start time
	// differs.
	deadOwner := fmt.Sprintf("%d.1", dead.Process.Pid)
	live := ownerOf(os.Getpid()).String()
	names := []string{
		"berth-berth-base-" + deadOwner + "-job1",   // removed
		"berth-berth-base-" + live + "-job2",        // its owner runs
		"berth-other-base-" + deadOwner + "-job3",   // another base
		"my-berth-berth-base-" + deadOwner + "-job", // not berth's
	}
	st := f.state(t)
	for i, n := range names {
		st.VMs = append(st.VMs, fakeVM{Name: n, UUID: fmt.Sprintf("uuid-%d", i), State: "running", NIC1: "nat"})
	}
	f.writeState(t, st)
	configured(t, f.settings())
	want := []string{baseVM, names[1], names[2], names[3]}
	if got := f.vmNames(t); !slices.Equal(got, want) {
		t.Errorf("VMs after Configure: %v, want %v", got, want)
	}
	calls := join(f.calls(t))
	for _, c := range []string{"controlvm " + names[0] + " poweroff", "unregistervm " + names[0] + " --delete"} {
		if !slices.Contains(calls, c) {
			t.Errorf("Configure did not run %q; it ran\n%s", c, strings.Join(calls, "\n"))
		}
	}
}

// The guest's host key is checked under the base VM's name: an unknown or
// changed key is refused (and the VM removed), unless strict checking is
// off.
func TestGuestHostKey(t *testing.T) {
	t.Parallel()
	otherKey := func(t *testing.T) ssh.PublicKey {
		_, pub := sshdtest.NewKeyPair(t)
		return pub
	}
	tests := []struct {
		name    string
		known   func(t *testing.T, f *fakeVBox) string
		strict  bool
		wantErr string
	}{
		{"unknown", func(*testing.T, *fakeVBox) string { return "" }, true, "host berth-base is not in the known_hosts file"},
		{"changed", func(t *testing.T, f *fakeVBox) string {
			return knownhosts.Line([]string{baseVM}, otherKey(t)) + "\n"
		}, true, "host key of berth-base does not match"},
		{"unknown, not strict", func(*testing.T, *fakeVBox) string { return "" }, false, ""},
		{"changed, not strict", func(t *testing.T, f *fakeVBox) string {
			return knownhosts.Line([]string{baseVM}, otherKey(t)) + "\n"
		}, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeVBox(t, 0)
			if err := os.WriteFile(f.knownHosts, []byte(tt.known(t, f)), 0o600); err != nil {
				t.Fatal(err)
			}
			settings := f.settings()
			settings["disable_strict_host_key_checking"] = !tt.strict
			e := configured(t, settings)
			h, err := e.Prepare(t.Context(), sdk.Job{ID: "hostkey", Shell: "sh"})
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Prepare: %v", err)
				}
				if err := e.Cleanup(t.Context(), h); err != nil {
					t.Fatalf("Cleanup: %v", err)
				}
			} else {
				var hk *sshexec.HostKeyError
				fp := ssh.FingerprintSHA256(f.hostKey)
				if !errors.As(err, &hk) || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), fp) {
					t.Fatalf("Prepare: %v; want a host key error saying %q and naming the guest's key %s", err, tt.wantErr, fp)
				}
			}
			if names := f.vmNames(t); !slices.Equal(names, []string{baseVM}) {
				t.Errorf("VMs after the job: %v, want only the base", names)
			}
		})
	}
}

// A guest that takes a while to boot is waited for; one whose SSH server
// never comes is given up on after boot_timeout, and its VM removed.
func TestBoot(t *testing.T) {
	t.Parallel()
	t.Run("slow", func(t *testing.T) {
		f := newFakeVBox(t, 1500*time.Millisecond)
		e := configured(t, f.settings())
		h, err := e.Prepare(t.Context(), sdk.Job{ID: "slow-boot", Shell: "sh"})
		if err != nil {
			t.Fatalf("Prepare of a guest that boots in 1.5 s: %v", err)
		}
		if err := e.Cleanup(t.Context(), h); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("never", func(t *testing.T) {
		f := newFakeVBox(t, 0)
		st := f.state(t)
		st.VMs[0].NIC1 = "none" // the forwarded port leads nowhere
		f.writeState(t, st)
		settings := f.settings()
		settings["boot_timeout"] = "2s"
		e := configured(t, settings)
		_, err := e.Prepare(t.Context(), sdk.Job{ID: "no-boot", Shell: "sh"})
		if err == nil || !strings.Contains(err.Error(), "did not answer within boot_timeout") {
			t.Fatalf("Prepare of a guest without SSH: %v; want an error saying it did not answer within boot_timeout", err)
		}
		if names := f.vmNames(t); !slices.Equal(names, []string{baseVM}) {
			t.Errorf("VMs after the failed Prepare: %v, want only the base", names)
		}
	})
}

// The stand-in must refuse what VirtualBox refuses, or it could not catch
// the executor drifting from VBoxManage's documented syntax.
func TestStandInRefusesWrongSyntax(t *testing.T) {
	t.Parallel()
	f := newFakeVBox(t, 0)
	tests := []struct {
		args     []string
		wantCode int // 2: syntax error, 1: failure
		wantMsg  string
	}{
		{[]string{"clonevm", baseVM, "--name"}, 2, "requires a value"},
		{[]string{"clonevm", baseVM, "--nmae", "x"}, 2, "Unknown option: --nmae"},
		{[]string{"clonevm", baseVM, "--name", "x", "--options", "linked", "--snapshot", "clean"}, 2, "Invalid clone options"},
		{[]string{"clonevm", baseVM, "--name", "x", "--mode", "vm"}, 2, "Invalid clone mode"},
		{[]string{"clonevm", baseVM, "--name", "x", "--options", "link", "--register"}, 1, "only be created from a snapshot"},
		{[]string{"clonevm", baseVM, "--name", "x", "--snapshot", "dirty", "--register"}, 1, "Could not find a snapshot named 'dirty'"},
		{[]string{"clonevm", "no-such-vm", "--name", "x"}, 1, "Could not find a registered machine named 'no-such-vm'"},
		{[]string{"modifyvm", baseVM, "--natpf1", "ssh,tcp,127.0.0.1,2222,22"}, 2, "Invalid NAT rule"},
		{[]string{"modifyvm", baseVM, "--natpf1", "ssh,sctp,127.0.0.1,2222,,22"}, 2, "protocol must be tcp or udp"},
		{[]string{"modifyvm", baseVM, "--natpf1", "ssh,tcp,localhost,2222,,22"}, 2, "is not an IP address"},
		{[]string{"modifyvm", baseVM, "--natpf1", "ssh,tcp,127.0.0.1,0,,22"}, 2, "is not a port"},
		{[]string{"modifyvm", baseVM, "--memory", "512"}, 2, "not implemented by the stand-in"},
		{[]string{"startvm", baseVM, "--type", "window"}, 2, "Invalid session type"},
		{[]string{"controlvm", baseVM, "shutdown"}, 2, "not implemented by the stand-in"},
		{[]string{"controlvm", baseVM, "poweroff"}, 1, "is not currently running"},
		{[]string{"unregistervm", baseVM, "--purge"}, 2, "Unknown option: --purge"},
		{[]string{"showvminfo", baseVM, "--machine-readable"}, 2, "Unknown option"},
		{[]string{"snapshot", baseVM, "list"}, 2, "Invalid command 'snapshot'"},
		{[]string{"list", "runningvms"}, 2, "lists only vms"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, out := f.run(tt.args...)
			if code != tt.wantCode || !strings.Contains(out, tt.wantMsg) {
				t.Errorf("VBoxManage %s: exit status %d, output %q; want %d and %q", strings.Join(tt.args, " "), code, out, tt.wantCode, tt.wantMsg)
			}
		})
	}
	// The documented spellings it must accept: --opt=value, any case of
	// the clone options, the 7.0 spelling of --natpf.
	for _, args := range [][]string{
		{"clonevm", baseVM, "--name=ok", "--register", "--snapshot=clean", "--options=Link,KeepNATMACs", "--mode=machine"},
		{"modifyvm", "ok", "--nat-pf1=ssh,tcp,127.0.0.1,2222,,22"},
		{"modifyvm", "ok", "--natpf1", "delete", "ssh"},
		{"unregistervm", "ok", "--delete"},
	} {
		if code, out := f.run(args...); code != 0 {
			t.Errorf("VBoxManage %s: exit status %d: %s", strings.Join(args, " "), code, out)
		}
	}
}

// A Prepare retried for the same job replaces its VM instead of leaking
// the first.
func TestPrepareAgainReplacesTheVM(t *testing.T) {
	t.Parallel()
	f := newFakeVBox(t, 0)
	e := configured(t, f.settings())
	ctx := context.WithoutCancel(t.Context())
	job := sdk.Job{ID: "again", Shell: "sh"}
	if _, err := e.Prepare(ctx, job); err != nil {
		t.Fatal(err)
	}
	first := f.state(t).VMs[1]
	h, err := e.Prepare(ctx, job)
	if err != nil {
		t.Fatal(err)
	}
	st := f.state(t)
	if len(st.VMs) != 2 || st.VMs[1].UUID == first.UUID || !sshdtest.ProcessGone(first.GuestPid) {
		t.Errorf("after the second Prepare: VMs %v (first %s), first guest gone: %v; want one new VM", f.vmNames(t), first.UUID, sshdtest.ProcessGone(first.GuestPid))
	}
	if err := e.Cleanup(ctx, h); err != nil {
		t.Fatal(err)
	}
}
