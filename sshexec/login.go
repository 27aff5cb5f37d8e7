package sshexec

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// Login is the part of an SSH executor's settings that says how to log in
// and where jobs go: the settings the ssh, virtualbox and qemu executors
// share, under the same keys. An executor's settings struct embeds it with
// the tag `mapstructure:",squash"` (sdk.Schema and sdk.DecodeConfig treat
// its fields as the struct's own) and starts from DefaultLogin. The
// account and its password are the executor's own settings, since their
// keys differ.
type Login struct {
	IdentityFile                 string        `mapstructure:"identity_file" help:"private key file to log in with (~ is this user's home)"`
	Passphrase                   string        `mapstructure:"passphrase" secret:"true" help:"passphrase of identity_file, when it is encrypted"`
	KnownHostsFile               string        `mapstructure:"known_hosts_file" help:"OpenSSH known_hosts file the host's key must be in (a VM guest's under host_key_alias; ~ is this user's home)"`
	DisableStrictHostKeyChecking bool          `mapstructure:"disable_strict_host_key_checking" help:"accept any host key, also an unknown or changed one (not recommended)"`
	BuildsDir                    string        `mapstructure:"builds_dir" help:"remote directory holding a build directory per job; relative to (or ~/ for) the login directory unless absolute"`
	KeepaliveInterval            time.Duration `mapstructure:"keepalive_interval" help:"interval of SSH keepalive requests; after 3 unanswered the connection is dropped (0: never)"`
}

// DefaultLogin is Login's defaults: host keys checked strictly against
// ~/.ssh/known_hosts, jobs below "builds" in the login directory, a
// keepalive every DefaultKeepaliveInterval.
func DefaultLogin() Login {
	return Login{
		KnownHostsFile:    "~/.ssh/known_hosts",
		BuildsDir:         "builds",
		KeepaliveInterval: DefaultKeepaliveInterval,
	}
}

// Check checks the settings, replaces a leading "~/" of identity_file and
// known_hosts_file by this user's home directory, and returns the ways to
// log in: the key in identity_file, then password, the value of the
// executor's setting passwordSetting. Errors name the setting at fault.
func (l *Login) Check(password, passwordSetting string) ([]ssh.AuthMethod, error) {
	if strings.TrimRight(l.BuildsDir, "/") == "" {
		return nil, fmt.Errorf("setting \"builds_dir\" must name a directory, got %q", l.BuildsDir)
	}
	var err error
	if l.KnownHostsFile, err = ExpandHome(l.KnownHostsFile); err != nil {
		return nil, fmt.Errorf("setting \"known_hosts_file\": %w", err)
	}
	if l.IdentityFile, err = ExpandHome(l.IdentityFile); err != nil {
		return nil, fmt.Errorf("setting \"identity_file\": %w", err)
	}
	var auth []ssh.AuthMethod
	if l.IdentityFile != "" {
		key, err := KeyFileAuth(l.IdentityFile, l.Passphrase)
		if err != nil {
			return nil, fmt.Errorf("setting \"identity_file\": %w", err)
		}
		auth = append(auth, key)
	}
	if password != "" {
		auth = append(auth, PasswordAuth(password)...)
	}
	if len(auth) == 0 {
		return nil, fmt.Errorf("set %q or \"identity_file\" to log in with", passwordSetting)
	}
	if l.KnownHostsFile == "" && !l.DisableStrictHostKeyChecking {
		return nil, errors.New("setting \"known_hosts_file\" is empty and strict host key checking is on; name a known_hosts file (or set disable_strict_host_key_checking)")
	}
	return auth, nil
}

// DialConfig is how to log in to host:port as user with auth (from Check),
// checking the host's key as the settings say. The rest of Config (retries,
// timeouts, the logger, a host key alias) is left for the executor.
func (l *Login) DialConfig(host string, port int, user string, auth []ssh.AuthMethod) Config {
	keepalive := l.KeepaliveInterval
	if keepalive <= 0 {
		keepalive = -1 // the setting's 0 (never) is Config's negative
	}
	return Config{
		Host: host, Port: port, User: user,
		Auth: auth,
		HostKeys: HostKeyPolicy{
			KnownHostsFile: l.KnownHostsFile,
			AcceptAny:      l.DisableStrictHostKeyChecking,
		},
		KeepaliveInterval: keepalive,
	}
}

// AdviseOnHostKey adds to err, when it holds a host key refused as unknown,
// what to do about it: advice (when not empty), or, not recommended, to set
// disable_strict_host_key_checking. Other errors are returned as they are.
func AdviseOnHostKey(err error, advice string) error {
	var hk *HostKeyError
	if !errors.As(err, &hk) || !hk.Unknown {
		return err
	}
	if advice != "" {
		advice += "; "
	}
	return fmt.Errorf("%w (%sor, not recommended, set disable_strict_host_key_checking)", err, advice)
}

// ExpandHome replaces a leading "~/" of a local path (or a path that is
// just "~") by this user's home directory.
func ExpandHome(p string) (string, error) {
	if p != "~" && !strings.HasPrefix(p, "~/") {
		return p, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("expanding ~ in %q: %w", p, err)
	}
	return filepath.Join(home, strings.TrimPrefix(p, "~")), nil
}
