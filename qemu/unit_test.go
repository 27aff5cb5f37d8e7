package qemu

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berthci/berth/sdk"
)

// decode turns raw settings into a checked configuration, as Configure
// does before it looks at programs and images.
func decode(raw map[string]any) (*config, error) {
	s := defaultSettings()
	if err := sdk.DecodeConfig(raw, &s); err != nil {
		return nil, err
	}
	return checkSettings(s)
}

func TestSettings(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinuz")
	notKey := filepath.Join(dir, "not-a-key")
	for _, f := range []string{kernel, notKey} {
		must(t, os.WriteFile(f, []byte("x"), 0o600), "writing %s", f)
	}
	good := map[string]any{"base_image": "/images/base.qcow2", "ssh_user": "ci", "ssh_password": "pw"}
	with := func(kv ...any) map[string]any {
		m := map[string]any{}
		for k, v := range good {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == nil {
				delete(m, kv[i].(string))
			} else {
				m[kv[i].(string)] = kv[i+1]
			}
		}
		return m
	}
	tests := []struct {
		name    string
		raw     map[string]any
		wantErr string
	}{
		{"good", good, ""},
		{"direct kernel boot", with("kernel", kernel, "initrd", kernel, "append", "console=ttyS0"), ""},
		{"base_image missing", with("base_image", nil), `"base_image" is required`},
		{"base_image relative", with("base_image", "base.qcow2"), `"base_image" must be an absolute path`},
		{"ssh_user missing", with("ssh_user", nil), `"ssh_user" is required`},
		{"unknown accel", with("accel", "hvf"), `"accel" must be one of auto, kvm, tcg`},
		{"too little memory", with("memory", "8m"), `"memory" must be at least 16m`},
		{"memory not a size", with("memory", "lots"), `"memory"`},
		{"no cpus", with("cpus", 0), `"cpus" must be at least 1`},
		{"initrd without kernel", with("initrd", kernel), `need "kernel"`},
		{"append without kernel", with("append", "quiet"), `need "kernel"`},
		{"kernel missing", with("kernel", filepath.Join(dir, "nope")), `setting "kernel"`},
		{"comma in overlay_dir", with("overlay_dir", "/tmp/a,b"), `"overlay_dir" must not contain a comma`},
		{"bad ssh_port", with("ssh_port", 70000), `"ssh_port" must be a port`},
		{"no boot_timeout", with("boot_timeout", "0s"), `"boot_timeout" must be positive`},
		{"empty builds_dir", with("builds_dir", "/"), `"builds_dir" must name a directory`},
		{"no way to log in", with("ssh_password", nil), `set "ssh_password" or "identity_file"`},
		{"identity_file not a key", with("ssh_password", nil, "identity_file", notKey), `setting "identity_file"`},
		{"no known_hosts_file", with("known_hosts_file", ""), `"known_hosts_file" is empty`},
		{"no known_hosts_file, not strict", with("known_hosts_file", "", "disable_strict_host_key_checking", true), ""},
		{"unknown setting", with("image", "x"), `unknown setting "image"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decode(tt.raw)
			if tt.wantErr == "" && err != nil {
				t.Errorf("settings %v: %v", tt.raw, err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("settings %v: %v; want an error saying %s", tt.raw, err, tt.wantErr)
			}
		})
	}
	t.Run("defaults", func(t *testing.T) {
		cfg, err := decode(good)
		must(t, err, "decode")
		home, _ := os.UserHomeDir()
		if cfg.Memory != 1<<30 || cfg.CPUs != 1 || cfg.Accel != "auto" || cfg.SSHPort != 22 || cfg.BuildsDir != "builds" ||
			cfg.KnownHostsFile != filepath.Join(home, ".ssh/known_hosts") || cfg.alias() != "base.qcow2" {
			t.Errorf("defaults: %+v, alias %q", cfg.settings, cfg.alias())
		}
	})
}

func TestQEMUArgs(t *testing.T) {
	t.Parallel()
	common := func(accel, cpu, mem, netdev string) []string {
		return []string{
			"-name", "berth-job-1.2-job",
			"-accel", accel, "-cpu", cpu, "-smp", "2", "-m", mem,
			"-nodefaults", "-no-user-config", "-display", "none",
			"-serial", "file:/o/1.2-job/console.log",
			"-drive", "file=/o/1.2-job/disk.qcow2,if=virtio,format=qcow2,cache=unsafe",
			"-netdev", netdev,
			"-device", "virtio-net-pci,netdev=net0",
			"-pidfile", "/o/1.2-job/qemu.pid",
		}
	}
	tests := []struct {
		name string
		cfg  config
		want []string
	}{
		{
			name: "tcg",
			cfg:  config{accel: "tcg", settings: settings{CPUs: 2, Memory: 512 << 20, SSHPort: 22}},
			want: common("tcg", "max", "512M", "user,id=net0,hostfwd=tcp:127.0.0.1:4000-:22"),
		},
		{
			name: "kvm, isolated, guest port 2222",
			cfg:  config{accel: "kvm", settings: settings{CPUs: 2, Memory: 1 << 30, SSHPort: 2222, IsolateNetwork: true}},
			want: common("kvm", "host", "1024M", "user,id=net0,hostfwd=tcp:127.0.0.1:4000-:2222,restrict=on"),
		},
		{
			name: "direct kernel boot and more arguments",
			cfg: config{accel: "tcg", settings: settings{CPUs: 2, Memory: 256 << 20, SSHPort: 22,
				Kernel: "/k/vmlinuz", Initrd: "/k/initrd", Append: "console=ttyS0 quiet",
				QEMUArgs: []string{"-device", "virtio-rng-pci"}}},
			want: append(common("tcg", "max", "256M", "user,id=net0,hostfwd=tcp:127.0.0.1:4000-:22"),
				"-kernel", "/k/vmlinuz", "-initrd", "/k/initrd", "-append", "console=ttyS0 quiet", "-device", "virtio-rng-pci"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := qemuArgs(&tt.cfg, "/o/1.2-job", 4000); !slices.Equal(got, tt.want) {
				t.Errorf("QEMU's arguments\n%q\nwant\n%q", got, tt.want)
			}
		})
	}
}

func TestChooseAccel(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	device := filepath.Join(dir, "kvm")
	must(t, os.WriteFile(device, nil, 0o600), "writing the stand-in device")
	cpuinfo := func(flags string) string {
		p := filepath.Join(dir, strings.ReplaceAll(flags, " ", "_")+".cpuinfo")
		must(t, os.WriteFile(p, []byte("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: "+flags+"\n\n"), 0o600), "writing cpuinfo")
		return p
	}
	answers := func(v int, err error) func(*os.File) (int, error) {
		return func(*os.File) (int, error) { return v, err }
	}
	tests := []struct {
		name    string
		setting string
		probe   kvmProbe
		want    string
		wantErr string
	}{
		{"auto, hardware virtualisation (AMD)", "auto", kvmProbe{device, cpuinfo("fpu sse2 svm lm"), answers(12, nil)}, "kvm", ""},
		{"auto, hardware virtualisation (Intel)", "auto", kvmProbe{device, cpuinfo("fpu vmx sse2"), answers(12, nil)}, "kvm", ""},
		{"auto, device without vmx or svm (PVM)", "auto", kvmProbe{device, cpuinfo("fpu sse2 lm hypervisor"), answers(12, nil)}, "tcg", ""},
		{"auto, no device", "auto", kvmProbe{filepath.Join(dir, "none"), cpuinfo("svm"), answers(12, nil)}, "tcg", ""},
		{"auto, device does not answer", "auto", kvmProbe{device, cpuinfo("svm"), answers(0, syscall.ENOTTY)}, "tcg", ""},
		{"auto, other API version", "auto", kvmProbe{device, cpuinfo("svm"), answers(11, nil)}, "tcg", ""},
		{"tcg", "tcg", kvmProbe{device, cpuinfo("svm"), answers(12, nil)}, "tcg", ""},
		{"kvm, device without vmx or svm", "kvm", kvmProbe{device, cpuinfo("fpu"), answers(12, nil)}, "kvm", ""},
		{"kvm, no device", "kvm", kvmProbe{filepath.Join(dir, "none"), cpuinfo("svm"), answers(12, nil)}, "", `"accel" is kvm, but`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := New(WithLogger(testLogger(t)))
			e.kvm = tt.probe
			got, err := e.chooseAccel(tt.setting)
			if got != tt.want || (tt.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("accel %s: %q, %v; want %q, error %q", tt.setting, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestDecodeState(t *testing.T) {
	t.Parallel()
	good := `{"dir":"/o/1.2-job_1-0123456789ab","pid":1234,"start":99,"port":4000,"user":"ci","build_dir":"/home/ci/builds/x"}`
	dirName := jobDirName(owner{1, 2}, "job/1")
	good = strings.Replace(good, "1.2-job_1-0123456789ab", dirName, 1)
	tests := []struct {
		name    string
		h       sdk.Handle
		wantErr string
	}{
		{"good", sdk.Handle{JobID: "job/1", Version: 1, State: []byte(good)}, ""},
		{"other version", sdk.Handle{JobID: "job/1", Version: 2, State: []byte(good)}, "state version 2"},
		{"not JSON", sdk.Handle{JobID: "job/1", Version: 1, State: []byte("{")}, "no valid state"},
		{"another job's folder", sdk.Handle{JobID: "job/2", Version: 1, State: []byte(good)}, "which is not that job's"},
		{"not a job folder", sdk.Handle{JobID: "job/1", Version: 1, State: []byte(strings.Replace(good, "/o/"+dirName, "/home", 1))}, "which is not that job's"},
		{"relative folder", sdk.Handle{JobID: "job/1", Version: 1, State: []byte(strings.Replace(good, "/o/", "o/", 1))}, "which is not that job's"},
		{"no pid", sdk.Handle{JobID: "job/1", Version: 1, State: []byte(strings.Replace(good, `"pid":1234`, `"pid":1`, 1))}, "names no VM"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decodeState(tt.h)
			if (tt.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("decodeState: %v; want error %q", err, tt.wantErr)
			}
		})
	}
}

func TestOwner(t *testing.T) {
	t.Parallel()
	self := ownerOf(os.Getpid())
	back, err := parseOwner(self.String())
	if err != nil || back != self || !back.running() {
		t.Errorf("owner %s parsed back as %v (%v), running %v", self, back, err, back.running())
	}
	ended := exec.Command("true")
	must(t, ended.Run(), "running true")
	if o := ownerOf(ended.Process.Pid); o.running() {
		t.Errorf("the owner %s (a process that ended) is running", o)
	}
	if o := (owner{pid: os.Getpid(), start: self.start + 1}); o.running() {
		t.Errorf("the owner %s (this pid, another start time) is running", o)
	}
	for _, bad := range []string{"", "12", "12.x", "x.12", "-1.5", "0.5"} {
		if _, err := parseOwner(bad); err == nil {
			t.Errorf("parseOwner(%q) succeeded", bad)
		}
	}
}

// fakeForward stands for QEMU's user-mode forward of a booting guest's SSH
// port: until the guest is "up" it accepts connections and holds them
// without a word; then every new connection gets a greeting.
type fakeForward struct {
	l     net.Listener
	mu    sync.Mutex
	up    bool
	held  []net.Conn
	greet string
}

func newFakeForward(t *testing.T, greet string) *fakeForward {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err, "listening")
	f := &fakeForward{l: l, greet: greet}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			f.mu.Lock()
			if f.up {
				_, _ = c.Write([]byte(f.greet))
			}
			f.held = append(f.held, c)
			f.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, c := range f.held {
			c.Close()
		}
	})
	return f
}

func (f *fakeForward) bootAfter(d time.Duration) {
	time.AfterFunc(d, func() {
		f.mu.Lock()
		f.up = true
		f.mu.Unlock()
	})
}

func TestAwaitBanner(t *testing.T) {
	t.Parallel()
	t.Run("held connections do not delay it", func(t *testing.T) {
		t.Parallel()
		// A probe that waited on its first, held connection would wait a
		// minute (probeWait), past this test's bound.
		f := newFakeForward(t, "SSH-2.0-fake\r\n")
		f.bootAfter(time.Second)
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		if err := awaitBanner(ctx, f.l.Addr().String(), nil); err != nil {
			t.Fatalf("awaitBanner: %v; want the greeting that came after 1 s", err)
		}
	})
	t.Run("other lines before the greeting", func(t *testing.T) {
		t.Parallel()
		f := newFakeForward(t, "welcome\r\nto the guest\r\nSSH-2.0-fake\r\n")
		f.bootAfter(0)
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		if err := awaitBanner(ctx, f.l.Addr().String(), nil); err != nil {
			t.Fatalf("awaitBanner: %v", err)
		}
	})
	t.Run("not SSH", func(t *testing.T) {
		t.Parallel()
		f := newFakeForward(t, "HTTP/1.0 400 Bad Request\r\n\r\n")
		f.bootAfter(0)
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		if err := awaitBanner(ctx, f.l.Addr().String(), nil); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("awaitBanner of a server that is not SSH: %v; want the deadline", err)
		}
	})
	t.Run("the VM ends", func(t *testing.T) {
		t.Parallel()
		f := newFakeForward(t, "")
		done := make(chan struct{})
		time.AfterFunc(500*time.Millisecond, func() { close(done) })
		if err := awaitBanner(t.Context(), f.l.Addr().String(), done); !errors.Is(err, errVMExited) {
			t.Fatalf("awaitBanner while the VM ends: %v; want errVMExited", err)
		}
	})
}

func TestHasVirtualisation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		cpuinfo string
		want    bool
	}{
		{"flags\t\t: fpu vme svm lm\n", true},
		{"flags\t\t: fpu vmx\n", true},
		{"flags\t\t: fpu vme de pse hypervisor\n", false},
		{"vmx flags\t: ept vpid\nflags\t\t: fpu\n", false}, // "vmx flags" lists VMX features, not the flag
		{"model name\t: svm vmx CPU\n", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := hasVirtualisation([]byte(tt.cpuinfo)); got != tt.want {
			t.Errorf("hasVirtualisation(%q) = %v, want %v", tt.cpuinfo, got, tt.want)
		}
	}
}
