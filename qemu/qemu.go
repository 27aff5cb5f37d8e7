// Package qemu is berth's qemu executor: every job runs in a VM of its own,
// a qemu-system-x86_64 process started for the job, reached over SSH
// through the shared transport in sshexec.
//
// Prepare makes the job a folder below overlay_dir holding a qcow2
// overlay of base_image (qemu-img create -b: the job writes to the
// overlay, base_image is only read, so any number of jobs share it), then
// starts QEMU on it: KVM when accel says so (auto: only when /dev/kvm
// answers and the CPU has hardware virtualisation), TCG otherwise; user-mode
// networking with a forward from a free 127.0.0.1 port to the guest's SSH
// port; memory and cpus as set; direct kernel boot when kernel is set. It
// waits for the guest's SSH server (boot_timeout), logs in and makes the
// build directory. Steps run on the job's one SSH connection as with the
// ssh executor (a session each; cancel = SIGTERM to the step's process
// group, the grace period, SIGKILL). Cleanup kills the VM and deletes the
// job's folder with its overlay.
//
// No VM outlives the plugin: QEMU runs in its own process group with
// Linux's parent-death signal (SIGKILL) set from a thread kept for as long
// as QEMU runs, so the kernel kills it when the plugin dies, however it
// dies. The job folders are named after the process running berth (the
// plugin's parent) and its start time: when the executor is first
// configured for an overlay_dir it kills the VMs and removes the folders
// that a berth no longer running left there.
//
// Each guest is fresh, so its host key is checked against known_hosts_file
// under the name host_key_alias (by default base_image's file name), not
// under the forwarded port: add one line "<alias> <key>" with the key baked
// into the image.
package qemu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/sshexec"
)

// Version is the qemu executor's version.
const Version = "0.1.0"

// settings are the executor's settings ([runners.qemu] in config.toml).
// gitlab-runner has no QEMU executor; the SSH login keys are named after
// its [runners.ssh] ones with an ssh_ prefix.
type settings struct {
	BaseImage      string   `mapstructure:"base_image" required:"true" help:"disk image every job's VM boots from (qcow2, or any format qemu-img reads); jobs write to overlays of their own, never to it"`
	Kernel         string   `mapstructure:"kernel" help:"kernel to boot directly (QEMU -kernel), for images without a boot loader"`
	Initrd         string   `mapstructure:"initrd" help:"initial ramdisk for kernel (QEMU -initrd)"`
	Append         string   `mapstructure:"append" help:"kernel command line for kernel (QEMU -append)"`
	Memory         sdk.Size `mapstructure:"memory" help:"memory of each VM"`
	CPUs           int      `mapstructure:"cpus" help:"virtual CPUs of each VM"`
	Accel          string   `mapstructure:"accel" help:"auto (KVM when /dev/kvm works and the CPU has hardware virtualisation, else TCG), kvm or tcg"`
	IsolateNetwork bool     `mapstructure:"isolate_network" help:"cut the guest off from the host and the outside (user networking with restrict=on); the SSH forward still works"`
	QEMUArgs       []string `mapstructure:"qemu_args" help:"more arguments for QEMU, after berth's (e.g. another -device)"`
	OverlayDir     string   `mapstructure:"overlay_dir" help:"folder holding each job's overlay disk, pid file and logs (~ is this user's home)"`
	QEMUPath       string   `mapstructure:"qemu_path" help:"the qemu-system-x86_64 program (a name is looked up on PATH)"`
	QEMUImgPath    string   `mapstructure:"qemu_img_path" help:"the qemu-img program (a name is looked up on PATH)"`

	SSHUser       string `mapstructure:"ssh_user" required:"true" help:"the guest account to log in as"`
	SSHPassword   string `mapstructure:"ssh_password" secret:"true" help:"its password (or set identity_file)"`
	SSHPort       int    `mapstructure:"ssh_port" help:"the guest's SSH port, which a free 127.0.0.1 port is forwarded to"`
	sshexec.Login `mapstructure:",squash"`
	HostKeyAlias  string        `mapstructure:"host_key_alias" help:"name the guest's key is looked up under in known_hosts_file (empty: base_image's file name)"`
	BootTimeout   time.Duration `mapstructure:"boot_timeout" help:"how long to wait for the guest's SSH server after QEMU starts"`
}

func defaultSettings() settings {
	return settings{
		Memory:      1 << 30,
		CPUs:        1,
		Accel:       "auto",
		OverlayDir:  filepath.Join(os.TempDir(), "berth-qemu"),
		QEMUPath:    "qemu-system-x86_64",
		QEMUImgPath: "qemu-img",
		SSHPort:     22,
		Login:       sshexec.DefaultLogin(),
		BootTimeout: 5 * time.Minute,
	}
}

// config is a checked configuration: the settings and what was made of
// them.
type config struct {
	settings
	auth []gossh.AuthMethod
	// accel is the accelerator QEMU gets: "kvm" or "tcg".
	accel string
	// baseFormat is base_image's format, as qemu-img reports it.
	baseFormat string
}

// alias is the name the guest's host key is looked up under.
func (c *config) alias() string {
	if c.HostKeyAlias != "" {
		return c.HostKeyAlias
	}
	return filepath.Base(c.BaseImage)
}

// Executor is the qemu executor. Its methods are safe for concurrent use;
// Run, Upload and Download are sshexec.Jobs'.
type Executor struct {
	vmJobs
	log   *slog.Logger
	owner owner
	kvm   kvmProbe

	mu    sync.Mutex
	cfg   *config
	vms   map[string]*vm  // by job ID: the VMs this executor started
	swept map[string]bool // overlay folders whose leftovers were removed
	tools map[string]bool // programs that answered --version
}

// vmJobs are the executor's jobs in their VMs, embedded under a name of
// the package's own.
type vmJobs = sshexec.Jobs

// Option changes how New sets up the executor.
type Option func(*Executor)

// WithLogger makes the executor log to l instead of slog's default logger
// (the one at the time of logging, so that sdk.Serve's applies).
func WithLogger(l *slog.Logger) Option { return func(e *Executor) { e.log = l } }

// WithOwnerPID names the process whose VMs this executor's are: job
// folders of an owner that is no longer running are removed as leftovers
// (their VMs killed). The default is the plugin's parent, the berth
// process.
func WithOwnerPID(pid int) Option { return func(e *Executor) { e.owner = ownerOf(pid) } }

// New returns a qemu executor; it needs Configure before it can prepare a
// job.
func New(opts ...Option) *Executor {
	e := &Executor{
		owner: ownerOf(os.Getppid()),
		kvm:   systemKVM(),
		vms:   map[string]*vm{},
		swept: map[string]bool{},
		tools: map[string]bool{},
	}
	e.Locate = e.locate
	for _, o := range opts {
		o(e)
	}
	return e
}

var _ sdk.Executor = (*Executor)(nil)

// Info implements sdk.Executor.
func (e *Executor) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{
		Name:        "qemu",
		Version:     Version,
		Description: "runs each job in a fresh QEMU VM (an overlay of a base image), over SSH",
		Capabilities: sdk.Capabilities{
			CancelGracefully: true,
			Isolated:         true,
			Shells:           []string{"bash", "sh"},
		},
		Config: sdk.Schema(defaultSettings()),
	}, nil
}

// Configure implements sdk.Executor. It checks the settings, QEMU,
// qemu-img and base_image, picks the accelerator, and the first time an
// overlay_dir is configured it removes what dead berth processes left
// there.
func (e *Executor) Configure(ctx context.Context, raw map[string]any) error {
	s := defaultSettings()
	if err := sdk.DecodeConfig(raw, &s); err != nil {
		return fmt.Errorf("qemu executor: %w", err)
	}
	cfg, err := checkSettings(s)
	if err != nil {
		return fmt.Errorf("qemu executor: %w", err)
	}
	if cfg.accel, err = e.chooseAccel(cfg.Accel); err != nil {
		return fmt.Errorf("qemu executor: %w", err)
	}
	for _, tool := range []struct{ setting, path, flag string }{
		{"qemu_path", cfg.QEMUPath, "-version"},
		{"qemu_img_path", cfg.QEMUImgPath, "--version"},
	} {
		if err := e.checkTool(ctx, tool.setting, tool.path, tool.flag); err != nil {
			return fmt.Errorf("qemu executor: %w", err)
		}
	}
	if cfg.baseFormat, err = imageFormat(ctx, cfg.QEMUImgPath, cfg.BaseImage); err != nil {
		return fmt.Errorf("qemu executor: setting \"base_image\": %w", err)
	}
	if err := os.MkdirAll(cfg.OverlayDir, 0o700); err != nil {
		return fmt.Errorf("qemu executor: setting \"overlay_dir\": %w", err)
	}
	e.mu.Lock()
	swept := e.swept[cfg.OverlayDir]
	e.mu.Unlock()
	if !swept {
		if err := e.removeLeftovers(ctx, cfg.OverlayDir); err != nil {
			return fmt.Errorf("qemu executor: %w", err)
		}
	}
	e.mu.Lock()
	e.swept[cfg.OverlayDir] = true
	e.cfg = cfg
	e.mu.Unlock()
	e.logger().Debug("qemu: configured", "base_image", cfg.BaseImage, "format", cfg.baseFormat, "accel", cfg.accel, "overlay_dir", cfg.OverlayDir)
	return nil
}

var accels = []string{"auto", "kvm", "tcg"}

func checkSettings(s settings) (*config, error) {
	var err error
	for _, p := range []struct {
		name string
		path *string
	}{
		{"base_image", &s.BaseImage}, {"kernel", &s.Kernel}, {"initrd", &s.Initrd},
		{"overlay_dir", &s.OverlayDir}, {"identity_file", &s.IdentityFile}, {"known_hosts_file", &s.KnownHostsFile},
	} {
		if *p.path, err = sshexec.ExpandHome(*p.path); err != nil {
			return nil, fmt.Errorf("setting %q: %w", p.name, err)
		}
		if *p.path != "" && !filepath.IsAbs(*p.path) {
			return nil, fmt.Errorf("setting %q must be an absolute path (or start with ~/), got %q", p.name, *p.path)
		}
	}
	switch {
	case !slices.Contains(accels, s.Accel):
		return nil, fmt.Errorf("setting \"accel\" must be one of %s, got %q", strings.Join(accels, ", "), s.Accel)
	case s.Memory < 16<<20:
		return nil, fmt.Errorf("setting \"memory\" must be at least 16m, got %s", s.Memory)
	case s.CPUs < 1:
		return nil, fmt.Errorf("setting \"cpus\" must be at least 1, got %d", s.CPUs)
	case s.Kernel == "" && (s.Initrd != "" || s.Append != ""):
		return nil, errors.New("settings \"initrd\" and \"append\" need \"kernel\" (they are for booting a kernel directly)")
	case strings.Contains(s.OverlayDir, ","):
		// Paths below it go into QEMU's comma-separated option syntax.
		return nil, fmt.Errorf("setting \"overlay_dir\" must not contain a comma, got %q", s.OverlayDir)
	case s.QEMUPath == "":
		return nil, errors.New("setting \"qemu_path\" is empty")
	case s.QEMUImgPath == "":
		return nil, errors.New("setting \"qemu_img_path\" is empty")
	case s.SSHPort < 1 || s.SSHPort > 65535:
		return nil, fmt.Errorf("setting \"ssh_port\" must be a port (1-65535), got %d", s.SSHPort)
	case s.BootTimeout <= 0:
		return nil, fmt.Errorf("setting \"boot_timeout\" must be positive, got %s", s.BootTimeout)
	}
	for _, f := range []struct{ name, path string }{{"kernel", s.Kernel}, {"initrd", s.Initrd}} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return nil, fmt.Errorf("setting %q: %w", f.name, err)
		}
	}
	auth, err := s.Login.Check(s.SSHPassword, "ssh_password")
	if err != nil {
		return nil, err
	}
	return &config{settings: s, auth: auth}, nil
}

func (e *Executor) logger() *slog.Logger {
	if e.log != nil {
		return e.log
	}
	return slog.Default()
}

func (e *Executor) config() (*config, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cfg == nil {
		return nil, errors.New("qemu executor: not configured (base_image, ssh_user and ssh_password or identity_file are needed)")
	}
	return e.cfg, nil
}
