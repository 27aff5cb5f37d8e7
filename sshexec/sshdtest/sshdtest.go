// Package sshdtest starts a real OpenSSH sshd on 127.0.0.1 for tests,
// with its own host key, configuration and login: no system sshd, no
// systemd, nothing left behind.
//
// The login is a temporary user made for the test when the test runs as
// root (useradd, removed with userdel when the test ends), or else the
// current user (an sshd started by another user can only log that user
// in). Tests that need a password (WithPassword) need root.
//
// When /usr/sbin/sshd is missing the test is skipped with a message
// saying what to install.
package sshdtest

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/berthci/berth/sshexec"
)

// SSHD is where the tests expect OpenSSH's server; sshd must be started by
// its absolute path.
const SSHD = "/usr/sbin/sshd"

// Account is a login the test sshd accepts.
type Account struct {
	User string
	// Password is set when the account was made WithPassword.
	Password string
	// ClientKeyFile holds an ed25519 private key (no passphrase) that the
	// account's authorized keys hold.
	ClientKeyFile string
	// AuthorizedKeysFile is the absolute path of its authorized keys.
	AuthorizedKeysFile string
	// Temporary is set when the user was made for the test.
	Temporary bool
}

type options struct {
	password bool
	config   []string
}

// Option changes what Start or NewAccount make.
type Option func(*options)

// WithPassword gives the account a random password and lets sshd accept
// passwords. It needs root (a temporary user is made); without it the test
// is skipped.
func WithPassword() Option { return func(o *options) { o.password = true } }

// WithConfig adds lines to sshd_config.
func WithConfig(lines ...string) Option {
	return func(o *options) { o.config = append(o.config, lines...) }
}

func collect(opts []Option) options {
	var o options
	for _, f := range opts {
		f(&o)
	}
	return o
}

// RequireSSHD skips the test when OpenSSH's server is missing or cannot
// run here.
func RequireSSHD(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(SSHD); err != nil {
		t.Skipf("%s is missing: install OpenSSH's server (Debian: apt-get install openssh-server openssh-client; .ci/setup-ssh.sh does it)", SSHD)
	}
	// sshd's privilege separation directory.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Skipf("sshd needs the directory /run/sshd, which cannot be made here (%v): run the tests as root or make it (mkdir -m 755 /run/sshd)", err)
	}
}

// NewAccount makes the login for a test sshd: a temporary user when
// running as root (removed when the test ends), else the current user.
func NewAccount(t testing.TB, opts ...Option) *Account {
	t.Helper()
	o := collect(opts)
	dir := t.TempDir()
	clientKey, clientPub := newKey(t)
	a := &Account{ClientKeyFile: filepath.Join(dir, "client_ed25519")}
	writeFile(t, a.ClientKeyFile, clientKey, 0o600)
	authorized := ssh.MarshalAuthorizedKey(clientPub)

	if os.Geteuid() != 0 {
		if o.password {
			t.Skip("a password login needs a user made for the test, which needs root")
		}
		u, err := user.Current()
		if err != nil {
			t.Fatalf("finding the current user: %v", err)
		}
		a.User = u.Username
		a.AuthorizedKeysFile = filepath.Join(dir, "authorized_keys")
		writeFile(t, a.AuthorizedKeysFile, authorized, 0o600)
		return a
	}

	a.User = "bt" + randomHex(6)
	a.Temporary = true
	run(t, "useradd", "--create-home", "--shell", "/bin/bash", "--comment", "berth sshdtest", a.User)
	t.Cleanup(func() {
		// --force: also when sshd has not yet finished closing a session.
		if out, err := exec.Command("userdel", "--remove", "--force", a.User).CombinedOutput(); err != nil {
			t.Logf("removing the test user %s: %v: %s", a.User, err, out)
		}
	})
	if o.password {
		a.Password = randomHex(12)
		cmd := exec.Command("chpasswd")
		cmd.Stdin = strings.NewReader(a.User + ":" + a.Password + "\n")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("setting the password of %s: %v: %s", a.User, err, out)
		}
	} else {
		// A new account's password field is "!" (locked), which sshd
		// without PAM refuses even for key logins; "*" only means "no
		// password".
		run(t, "usermod", "-p", "*", a.User)
	}
	u, err := user.Lookup(a.User)
	if err != nil {
		t.Fatalf("looking up the test user: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	sshDir := filepath.Join(u.HomeDir, ".ssh")
	if err := os.Mkdir(sshDir, 0o700); err != nil {
		t.Fatal(err)
	}
	a.AuthorizedKeysFile = filepath.Join(sshDir, "authorized_keys")
	writeFile(t, a.AuthorizedKeysFile, authorized, 0o600)
	for _, p := range []string{sshDir, a.AuthorizedKeysFile} {
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	return a
}

// Auth returns the ways to log in as the account (its key, and its
// password when it has one).
func (a *Account) Auth(t testing.TB) []ssh.AuthMethod {
	t.Helper()
	key, err := sshexec.KeyFileAuth(a.ClientKeyFile, "")
	if err != nil {
		t.Fatal(err)
	}
	return []ssh.AuthMethod{key}
}

// NewHostKey writes a new ed25519 host key to dir/name and returns its
// public half.
func NewHostKey(t testing.TB, dir, name string) (file string, pub ssh.PublicKey) {
	t.Helper()
	priv, pub := newKey(t)
	file = filepath.Join(dir, name)
	writeFile(t, file, priv, 0o600)
	return file, pub
}

// SSHDConfig is an sshd_config for the account and host key, without Port
// and ListenAddress.
func (a *Account) SSHDConfig(hostKeyFile string, extra ...string) string {
	lines := []string{
		"HostKey " + hostKeyFile,
		"PidFile none",
		"AuthorizedKeysFile " + a.AuthorizedKeysFile,
		"PubkeyAuthentication yes",
		"PasswordAuthentication " + yesNo(a.Password != ""),
		"KbdInteractiveAuthentication no",
		"UsePAM no",
		"PermitRootLogin " + yesNo(a.User == "root"),
		// The test's files live below /tmp, which is writable by all.
		"StrictModes no",
		"AllowUsers " + a.User,
		"UseDNS no",
		"MaxStartups 100:30:200",
		"MaxSessions 100",
		"LogLevel VERBOSE",
	}
	return strings.Join(append(lines, extra...), "\n") + "\n"
}

// Server is a running sshd.
type Server struct {
	Host    string // 127.0.0.1
	Port    int
	Account *Account
	// HostKey is the server's public host key; KnownHostsFile a
	// known_hosts file holding it for [127.0.0.1]:Port.
	HostKey        ssh.PublicKey
	KnownHostsFile string
	Dir            string
	cmd            *exec.Cmd
	logFile        string
	exited         chan struct{}
}

// Start starts sshd on a free 127.0.0.1 port and stops it when the test
// ends.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	RequireSSHD(t)
	o := collect(opts)
	acct := NewAccount(t, opts...)
	dir := t.TempDir()
	hostKeyFile, hostPub := NewHostKey(t, dir, "host_ed25519")
	s := &Server{Host: "127.0.0.1", Account: acct, HostKey: hostPub, Dir: dir, logFile: filepath.Join(dir, "sshd.log")}
	var lastErr error
	for range 3 { // the free port may be taken before sshd binds it
		s.Port = FreePort(t)
		cfgFile := filepath.Join(dir, "sshd_config")
		cfg := fmt.Sprintf("Port %d\nListenAddress 127.0.0.1\n", s.Port) + acct.SSHDConfig(hostKeyFile, o.config...)
		writeFile(t, cfgFile, []byte(cfg), 0o600)
		if out, err := exec.Command(SSHD, "-t", "-f", cfgFile).CombinedOutput(); err != nil {
			t.Fatalf("sshd refuses the test's configuration: %v: %s", err, out)
		}
		if lastErr = s.start(t, cfgFile); lastErr == nil {
			break
		}
	}
	if lastErr != nil {
		t.Fatalf("starting sshd: %v", lastErr)
	}
	s.KnownHostsFile = filepath.Join(dir, "known_hosts")
	writeFile(t, s.KnownHostsFile, []byte(knownhosts.Line([]string{s.Addr()}, hostPub)+"\n"), 0o600)
	return s
}

func (s *Server) start(t testing.TB, cfgFile string) error {
	return s.run(t, exec.Command(SSHD, "-D", "-e", "-f", cfgFile))
}

// run starts a server that stays in the foreground, logging to s.logFile,
// and waits until it listens on s.Addr().
func (s *Server) run(t testing.TB, cmd *exec.Cmd) error {
	logf, err := os.OpenFile(s.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group: a terminal's signals are not for it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", cmd.Path, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", s.Addr(), time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-exited:
			return fmt.Errorf("%s exited at start: %s", cmd.Path, s.Log())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-exited
			return fmt.Errorf("%s did not listen on %s within 10 s: %s", cmd.Path, s.Addr(), s.Log())
		}
	}
	s.cmd, s.exited = cmd, exited
	t.Cleanup(s.Stop)
	return nil
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return net.JoinHostPort(s.Host, strconv.Itoa(s.Port)) }

// Pid is the listening sshd's process ID.
func (s *Server) Pid() int { return s.cmd.Process.Pid }

// Log is what sshd has logged.
func (s *Server) Log() string {
	b, _ := os.ReadFile(s.logFile)
	return string(b)
}

// Stop stops the listening sshd (sessions still open end with their
// connections). Stopping twice is fine.
func (s *Server) Stop() {
	select {
	case <-s.exited:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

// Config is an sshexec.Config that logs in to the server with the
// account's key and checks its host key strictly.
func (s *Server) Config(t testing.TB) sshexec.Config {
	return sshexec.Config{
		Host: s.Host, Port: s.Port, User: s.Account.User,
		Auth:     s.Account.Auth(t),
		HostKeys: sshexec.HostKeyPolicy{KnownHostsFile: s.KnownHostsFile},
	}
}

// FreePort returns a TCP port of 127.0.0.1 that nothing listened on a
// moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// NewKeyPair makes an ed25519 key pair.
func NewKeyPair(t testing.TB) (ed25519.PrivateKey, ssh.PublicKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return priv, sshPub
}

// newKey makes an ed25519 key pair: the private key in OpenSSH's PEM
// format and the public key.
func newKey(t testing.TB) ([]byte, ssh.PublicKey) {
	t.Helper()
	priv, pub := NewKeyPair(t)
	block, err := ssh.MarshalPrivateKey(priv, "berth sshdtest")
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(block), pub
}

func writeFile(t testing.TB, name string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(name, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(name, mode); err != nil {
		t.Fatal(err)
	}
}

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) || errors.Is(err, exec.ErrNotFound) {
			t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out.String())
		}
		t.Fatal(err)
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
