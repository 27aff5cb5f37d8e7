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
	"github.com/berthci/berth/sdk/archive"
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

	User          string `mapstructure:"user" required:"true" help:"the guest account to log in as"`
	Password      string `mapstructure:"password" secret:"true" help:"its password (or set identity_file)"`
	sshexec.Login `mapstructure:",squash"`
	HostKeyAlias  string        `mapstructure:"host_key_alias" help:"name the guest's key is looked up under in known_hosts_file (empty: base_name)"`
	BootTimeout   time.Duration `mapstructure:"boot_timeout" help:"how long to wait for the guest's SSH server after startvm"`
}

func defaultSettings() settings {
	return settings{
		StartType:      "headless",
		VBoxManagePath: "VBoxManage",
		Login:          sshexec.DefaultLogin(),
		BootTimeout:    5 * time.Minute,
	}
}

// config is a checked configuration: the settings and what was made of
// them.
type config struct {
	settings
	auth []gossh.AuthMethod
}

// Executor is the virtualbox executor. Its methods are safe for
// concurrent use; Run, Upload and Download are sshexec.Jobs'.
type Executor struct {
	vmJobs
	log   *slog.Logger
	owner owner
	// cloneMu makes clones one at a time: VirtualBox locks the base VM's
	// media while it clones them.
	cloneMu sync.Mutex

	mu     sync.Mutex
	cfg    *config
	swept  map[string]bool // base names whose leftovers were removed
	vboxOK map[string]bool // VBoxManage paths that answered --version
}

// vmJobs are the executor's jobs in their VMs, embedded under a name of
// the package's own.
type vmJobs = sshexec.Jobs

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
	if s.BootTimeout <= 0 {
		return nil, fmt.Errorf("setting \"boot_timeout\" must be positive, got %s", s.BootTimeout)
	}
	auth, err := s.Login.Check(s.Password, "password")
	if err != nil {
		return nil, err
	}
	return &config{settings: s, auth: auth}, nil
}

// validVMName says whether name can be a VM name on VBoxManage's command
// line.
func validVMName(name string) bool {
	return name != "" && !strings.HasPrefix(name, "-") && !strings.ContainsAny(name, "\n\r\x00")
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
	return "berth-" + base + "-" + o.String() + "-" + archive.JobDirName(jobID)
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
