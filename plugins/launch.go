package plugins

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"syscall"
	"time"

	"github.com/hashicorp/go-plugin"

	"github.com/berthci/berth/sdk"
)

// DefaultStartTimeout is how long a plugin gets to answer the handshake.
const DefaultStartTimeout = 10 * time.Second

// StartOptions tune how a plugin process is started.
type StartOptions struct {
	// StartTimeout bounds the handshake (DefaultStartTimeout when zero).
	StartTimeout time.Duration
	// SHA256, when set, is the hex digest the plugin's file must have.
	SHA256 string
	// Log receives the plugin's log lines, tagged with its name.
	Log *slog.Logger
}

// Instance is one running plugin process.
type Instance struct {
	plugin    Plugin
	client    *plugin.Client
	cmd       *exec.Cmd
	exec      *sdk.Client
	info      sdk.Info
	socketDir string
}

var versionMismatch = regexp.MustCompile(`Plugin version: (\d+), Client versions: \[([\d ]*)\]`)

// Start starts p, completes the handshake (protocol negotiation, mutual TLS
// with fresh keys, the optional checksum) and asks the plugin for its Info.
func Start(ctx context.Context, p Plugin, opts StartOptions) (*Instance, error) {
	if opts.StartTimeout == 0 {
		opts.StartTimeout = DefaultStartTimeout
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	// An installed plugin must still be the file installed (its manifest
	// records the digest); one put in a folder by hand is not checked.
	if err := checkUnchanged(p); err != nil {
		return nil, err
	}
	socketDir, err := os.MkdirTemp("", "berth-plugin-"+p.Name+"-")
	if err != nil {
		return nil, fmt.Errorf("executor plugin %q: making its socket folder: %w", p.Name, err)
	}
	// Mutual TLS on the plugin's socket, with keys made for this process.
	tlsConfig, tlsEnv, err := sdk.NewTLS()
	if err != nil {
		os.RemoveAll(socketDir)
		return nil, fmt.Errorf("executor plugin %q: %w", p.Name, err)
	}
	cmd := exec.Command(p.Path, p.Args...)
	cmd.Env = append(cmd.Env, plugin.EnvUnixSocketDir+"="+socketDir, sdk.EnvTLS+"="+tlsEnv)
	// The plugin gets SIGTERM when berth dies, even by SIGKILL, so it can
	// stop its jobs; it has its own process group so a terminal's Ctrl-C
	// reaches berth only, and berth decides how jobs stop.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Setpgid: true}

	cfg := &plugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake(),
		VersionedPlugins: sdk.PluginSets(nil),
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		TLSConfig:        tlsConfig,
		StartTimeout:     opts.StartTimeout,
		Logger:           newHCLogAdapter(opts.Log, p.Name),
		GRPCDialOptions:  sdk.GRPCDialOptions(),
		SyncStdout:       discard{},
	}
	if opts.SHA256 != "" {
		sum, err := hex.DecodeString(opts.SHA256)
		if err != nil || len(sum) != sha256.Size {
			os.RemoveAll(socketDir)
			return nil, fmt.Errorf("executor plugin %q: the pinned sha256 %q is not 64 hex digits", p.Name, opts.SHA256)
		}
		cfg.SecureConfig = &plugin.SecureConfig{Checksum: sum, Hash: sha256.New()}
	}
	inst := &Instance{plugin: p, cmd: cmd, socketDir: socketDir}
	inst.client = plugin.NewClient(cfg)
	rpc, err := inst.client.Client()
	if err != nil {
		inst.Kill()
		return nil, inst.startError(err, opts)
	}
	raw, err := rpc.Dispense(sdk.PluginName)
	if err != nil {
		inst.Kill()
		return nil, fmt.Errorf("executor plugin %q (%s): %w", p.Name, p.Path, err)
	}
	c, ok := raw.(*sdk.Client)
	if !ok {
		inst.Kill()
		return nil, fmt.Errorf("executor plugin %q (%s) is not an executor (it serves %T)", p.Name, p.Path, raw)
	}
	inst.exec = c
	infoCtx, cancel := context.WithTimeout(ctx, opts.StartTimeout)
	defer cancel()
	info, err := c.Info(infoCtx)
	if err != nil {
		inst.Kill()
		return nil, fmt.Errorf("executor plugin %q (%s) did not describe itself: %w", p.Name, p.Path, err)
	}
	if info.Name != p.Name {
		opts.Log.Warn("executor plugin calls itself by another name", "plugin", p.Name, "says", info.Name, "path", p.Path)
	}
	inst.info = info
	return inst, nil
}

func (i *Instance) startError(err error, opts StartOptions) error {
	p := i.plugin
	if m := versionMismatch.FindStringSubmatch(err.Error()); m != nil {
		return fmt.Errorf("executor plugin %q (%s) speaks executor protocol %s, but this berth speaks protocol %s: install a build of the plugin for protocol %d",
			p.Name, p.Path, m[1], m[2], sdk.ProtocolVersion)
	}
	if errors.Is(err, plugin.ErrChecksumsDoNotMatch) {
		return fmt.Errorf("executor plugin %q (%s) does not match its pinned sha256 %s: refusing to start it", p.Name, p.Path, opts.SHA256)
	}
	if how := i.Death(); how != "" {
		return fmt.Errorf("executor plugin %q (%s) failed to start (%s): %w", p.Name, p.Path, how, err)
	}
	return fmt.Errorf("executor plugin %q (%s) failed to start within %s: %w", p.Name, p.Path, opts.StartTimeout, err)
}

// Plugin is what was started.
func (i *Instance) Plugin() Plugin { return i.plugin }

// Info is what the plugin said about itself at start.
func (i *Instance) Info() sdk.Info { return i.info }

// Executor is the plugin's executor.
func (i *Instance) Executor() *sdk.Client { return i.exec }

// Pid is the plugin process's id (0 before it started).
func (i *Instance) Pid() int {
	if i.cmd.Process == nil {
		return 0
	}
	return i.cmd.Process.Pid
}

// Exited reports whether the plugin process has ended.
func (i *Instance) Exited() bool { return i.client.Exited() }

// Death says how the plugin process ended ("killed by signal: killed",
// "exited with status 2"), or "" while it runs.
func (i *Instance) Death() string {
	if !i.client.Exited() || i.cmd.ProcessState == nil {
		return ""
	}
	ws, ok := i.cmd.ProcessState.Sys().(syscall.WaitStatus)
	switch {
	case !ok:
		return i.cmd.ProcessState.String()
	case ws.Signaled():
		return "killed by signal " + strconv.Itoa(int(ws.Signal())) + " (" + ws.Signal().String() + ")"
	default:
		return "exited with status " + strconv.Itoa(ws.ExitStatus())
	}
}

// Kill stops the plugin: go-plugin asks it to shut down, then kills it.
func (i *Instance) Kill() {
	i.client.Kill()
	os.RemoveAll(i.socketDir)
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
