// Package virtualbox is berth's virtualbox executor: every job runs in a
// throw-away VirtualBox VM, reached over SSH through the shared transport
// in sshexec.
//
// Prepare drives VBoxManage as VirtualBox's manual documents it: a linked
// clone of base_name at base_snapshot (a full clone of its current state
// with disable_snapshots), a NAT port-forwarding rule from a free
// 127.0.0.1 port to the guest's port 22, startvm (headless unless
// start_type says otherwise), then it waits for the guest's SSH server.
// Steps run on the job's one SSH connection exactly as with the ssh
// executor (a session each; cancel = SIGTERM to the step's process group,
// the grace period, SIGKILL). Cleanup powers the VM off and deletes it
// (controlvm poweroff, unregistervm --delete).
//
// VMs are named berth-<base_name>-<owner>-<job>, the owner being the
// process that runs berth (the plugin's parent) and its start time. When
// the executor is first configured for a base it removes the VMs of that
// base whose owner is no longer running: what a berth that died left.
//
// The guest's host key is checked against known_hosts_file under the name
// host_key_alias (base_name by default), since every clone answers on a
// new port: add one line "<base_name> <key>" for the base VM's key.
package virtualbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/sshexec"
)

// Version is the virtualbox executor's version.
const Version = "0.1.0"

// settings are the executor's settings ([runners.virtualbox] in
// config.toml), named as gitlab-runner names them where it has them (its
// [runners.ssh] keys for the guest login are here too).
type settings struct {
	BaseName         string `mapstructure:"base_name" required:"true" help:"the VM every job's VM is cloned from"`
	BaseSnapshot     string `mapstructure:"base_snapshot" help:"snapshot of base_name that linked clones are made from (empty: its current snapshot)"`
	BaseFolder       string `mapstructure:"base_folder" help:"folder the job VMs are created in (empty: VirtualBox's default)"`
	DisableSnapshots bool   `mapstructure:"disable_snapshots" help:"make full clones of base_name's current state instead of linked clones"`
	StartType        string `mapstructure:"start_type" help:"how VMs are started: headless, gui, sdl or separate"`
	VBoxManagePath   string `mapstructure:"vboxmanage_path" help:"the VBoxManage program (a name is looked up on PATH)"`

	User                         string `mapstructure:"user" required:"true" help:"the guest account to log in as"`
	Password                     string `mapstructure:"password" secret:"true" help:"its password (or set identity_file)"`
	IdentityFile                 string `mapstructure:"identity_file" help:"private key file to log in with (~ is this user's home)"`
	Passphrase                   string `mapstructure:"passphrase" secret:"true" help:"passphrase of identity_file, when it is encrypted"`
	KnownHostsFile               string `mapstructure:"known_hosts_file" help:"OpenSSH known_hosts file holding the guest's host key under host_key_alias (~ is this user's home)"`
	HostKeyAlias                 string `mapstructure:"host_key_alias" help:"name the guest's key is looked up under in known_hosts_file (empty: base_name)"`
	DisableStrictHostKeyChecking bool   `mapstructure:"disable_strict_host_key_checking" help:"accept any guest host key (not recommended)"`

	BuildsDir         string        `mapstructure:"builds_dir" help:"guest directory holding the job's build directory; relative to the login directory unless absolute"`
	BootTimeout       time.Duration `mapstructure:"boot_timeout" help:"how long to wait for the guest's SSH server after startvm"`
	KeepaliveInterval time.Duration `mapstructure:"keepalive_interval" help:"interval of SSH keepalive requests; after 3 unanswered the connection is dropped (0: never)"`
}

func defaultSettings() settings {
	return settings{
		StartType:         "headless",
		VBoxManagePath:    "VBoxManage",
		KnownHostsFile:    "~/.ssh/known_hosts",
		BuildsDir:         "builds",
		BootTimeout:       5 * time.Minute,
		KeepaliveInterval: sshexec.DefaultKeepaliveInterval,
	}
}

// config is a checked configuration: the settings and what was made of
// them.
type config struct {
	settings
	auth []gossh.AuthMethod
}

// Executor is the virtualbox executor. Its methods are safe for
// concurrent use.
type Executor struct {
	log   *slog.Logger
	owner owner
	conns sshexec.JobConns
	// cloneMu makes clones one at a time: VirtualBox locks the base VM's
	// media while it clones them.
	cloneMu sync.Mutex

	mu     sync.Mutex
	cfg    *config
	swept  map[string]bool // base names whose leftovers were removed
	vboxOK map[string]bool // VBoxManage paths that answered --version
}

// Option changes how New sets up the executor.
type Option func(*Executor)

// WithLogger makes the executor log to l instead of slog's default logger
// (the one at the time of logging, so that sdk.Serve's applies).
func WithLogger(l *slog.Logger) Option { return func(e *Executor) { e.log = l } }

// WithOwnerPID names the process whose VMs this executor's are: VMs of
// an owner that is no longer running are removed as leftovers. The
// default is the plugin's parent, the berth process.
func WithOwnerPID(pid int) Option { return func(e *Executor) { e.owner = ownerOf(pid) } }

// New returns a virtualbox executor; it needs Configure before it can
// prepare a job.
func New(opts ...Option) *Executor {
	e := &Executor{owner: ownerOf(os.Getppid()), swept: map[string]bool{}, vboxOK: map[string]bool{}}
	for _, o := range opts {
		o(e)
	}
	return e
}

var _ sdk.Executor = (*Executor)(nil)

// Info implements sdk.Executor.
func (e *Executor) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{
		Name:        "virtualbox",
		Version:     Version,
		Description: "runs each job in a fresh VirtualBox VM (a clone of a base VM), over SSH",
		Capabilities: sdk.Capabilities{
			CancelGracefully: true,
			Isolated:         true,
			Shells:           []string{"bash", "sh"},
		},
		Config: sdk.Schema(defaultSettings()),
	}, nil
}

// Configure implements sdk.Executor. The first time a base is configured,
// VBoxManage is checked and the VMs that dead berth processes left of that
// base are removed.
func (e *Executor) Configure(ctx context.Context, raw map[string]any) error {
	s := defaultSettings()
	if err := sdk.DecodeConfig(raw, &s); err != nil {
		return fmt.Errorf("virtualbox executor: %w", err)
	}
	cfg, err := checkSettings(s)
	if err != nil {
		return fmt.Errorf("virtualbox executor: %w", err)
	}
	e.mu.Lock()
	checked, swept := e.vboxOK[cfg.VBoxManagePath], e.swept[cfg.BaseName]
	e.mu.Unlock()
	if !checked {
		out, err := e.vbox(ctx, cfg, "--version")
		if err != nil {
			return fmt.Errorf("virtualbox executor: %w", err)
		}
		e.logger().Debug("virtualbox: VBoxManage answers", "path", cfg.VBoxManagePath, "version", strings.TrimSpace(out))
	}
	if !swept {
		if err := e.removeLeftovers(ctx, cfg); err != nil {
			return fmt.Errorf("virtualbox executor: %w", err)
		}
	}
	e.mu.Lock()
	e.vboxOK[cfg.VBoxManagePath] = true
	e.swept[cfg.BaseName] = true
	e.cfg = cfg
	e.mu.Unlock()
	return nil
}

var startTypes = []string{"headless", "gui", "sdl", "separate"}

func checkSettings(s settings) (*config, error) {
	if !validVMName(s.BaseName) {
		return nil, fmt.Errorf("setting \"base_name\" must name a VM (no newline, no leading dash), got %q", s.BaseName)
	}
	if !slices.Contains(startTypes, s.StartType) {
		return nil, fmt.Errorf("setting \"start_type\" must be one of %s, got %q", strings.Join(startTypes, ", "), s.StartType)
	}
	if s.BaseFolder != "" && !filepath.IsAbs(s.BaseFolder) {
		return nil, fmt.Errorf("setting \"base_folder\" must be an absolute path, got %q", s.BaseFolder)
	}
	if s.VBoxManagePath == "" {
		return nil, errors.New("setting \"vboxmanage_path\" is empty")
	}
	if strings.TrimRight(s.BuildsDir, "/") == "" {
		return nil, fmt.Errorf("setting \"builds_dir\" must name a directory, got %q", s.BuildsDir)
	}
	if s.BootTimeout <= 0 {
		return nil, fmt.Errorf("setting \"boot_timeout\" must be positive, got %s", s.BootTimeout)
	}
	var err error
	if s.KnownHostsFile, err = expandHome(s.KnownHostsFile); err != nil {
		return nil, fmt.Errorf("setting \"known_hosts_file\": %w", err)
	}
	if s.IdentityFile, err = expandHome(s.IdentityFile); err != nil {
		return nil, fmt.Errorf("setting \"identity_file\": %w", err)
	}
	cfg := &config{settings: s}
	if s.IdentityFile != "" {
		key, err := sshexec.KeyFileAuth(s.IdentityFile, s.Passphrase)
		if err != nil {
			return nil, fmt.Errorf("setting \"identity_file\": %w", err)
		}
		cfg.auth = append(cfg.auth, key)
	}
	if s.Password != "" {
		cfg.auth = append(cfg.auth, sshexec.PasswordAuth(s.Password)...)
	}
	if len(cfg.auth) == 0 {
		return nil, errors.New("set \"password\" or \"identity_file\" to log in to the guests with")
	}
	if s.KnownHostsFile == "" && !s.DisableStrictHostKeyChecking {
		return nil, errors.New("setting \"known_hosts_file\" is empty and strict host key checking is on; name a known_hosts file (or set disable_strict_host_key_checking)")
	}
	return cfg, nil
}

// validVMName says whether name can be a VM name on VBoxManage's command
// line.
func validVMName(name string) bool {
	return name != "" && !strings.HasPrefix(name, "-") && !strings.ContainsAny(name, "\n\r\x00")
}

// expandHome replaces a leading "~/" by this user's home directory.
func expandHome(p string) (string, error) {
	if p != "~" && !strings.HasPrefix(p, "~/") {
		return p, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("expanding ~ in %q: %w", p, err)
	}
	return filepath.Join(home, strings.TrimPrefix(p, "~")), nil
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
		return nil, errors.New("virtualbox executor: not configured (base_name, user and a password or identity_file are needed)")
	}
	return e.cfg, nil
}

// vmName is the name of a job's VM.
func vmName(base string, o owner, jobID string) string {
	return "berth-" + base + "-" + o.String() + "-" + sshexec.JobDirName(jobID)
}

// leftoverName matches the VMs of base and captures their owner.
func leftoverName(base string) *regexp.Regexp {
	return regexp.MustCompile(`^berth-` + regexp.QuoteMeta(base) + `-([0-9]+\.[0-9]+)-`)
}

// removeLeftovers removes the VMs of cfg's base whose owner is no longer
// running.
func (e *Executor) removeLeftovers(ctx context.Context, cfg *config) error {
	vms, err := e.listVMs(ctx, cfg)
	if err != nil {
		return err
	}
	re := leftoverName(cfg.BaseName)
	var errs []error
	for _, name := range vms {
		m := re.FindStringSubmatch(name)
		if m == nil {
			continue
		}
		o, err := parseOwner(m[1])
		if err != nil || o.running() {
			continue
		}
		e.logger().Info("virtualbox: removing a VM that a berth no longer running left", "vm", name, "owner", m[1])
		if err := e.removeVM(ctx, cfg, name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
