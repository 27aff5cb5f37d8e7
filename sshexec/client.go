// Package sshexec runs a CI job's stages on another machine over SSH. It is
// the transport the ssh, virtualbox and qemu executors share:
//
//   - one connection per job ([Dial]; [JobConns] keeps one for each job),
//     with a connect timeout, retries of network failures, and keepalive
//     requests that close a connection whose server stopped answering;
//   - one session per stage ([Client.Run]): the script travels over the
//     session's stdin into a file of the job's temporary directory — never
//     on a command line — and runs with bash or sh as the leader of its own
//     process group; variables are exported by the script itself, so
//     nothing depends on sshd's AcceptEnv;
//   - cancel: SIGTERM to the stage's remote process group, the grace
//     period, SIGKILL, and only then is the session closed (OpenSSH leaves
//     a command without a terminal running when its session is closed);
//     after a normal end, whatever the stage left in its group is killed;
//   - files move as tar streams over a session ([Client.Upload],
//     [Client.Download]): no sftp server is needed.
//
// A job's remote layout is a build directory DIR and its sibling DIR.tmp
// (mode 0700), which holds the stage scripts and one marker file per running
// stage (stage-PGID.pgid) so that [Client.RemoveWorkspace] can kill stages
// a crashed plugin left running. [Client.MakeWorkspace] creates both.
//
// The remote side needs a POSIX login shell (sh, bash, dash, ksh, zsh;
// not csh or fish), /bin/sh, tar (tested with GNU tar), and cat, wc,
// mkdir, rm and a sleep that takes fractions of a second. Whether a process
// group is gone is read from /proc where there is one (Linux), otherwise
// from kill -0, which counts zombies as alive.
package sshexec

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// Defaults of Config.
const (
	DefaultPort              = 22
	DefaultConnectTimeout    = 30 * time.Second
	DefaultRetryDelay        = 2 * time.Second
	DefaultKeepaliveInterval = 30 * time.Second
	DefaultKeepaliveCountMax = 3
)

// Config says where and how to connect.
type Config struct {
	// Host is the server's name or address; Port its port (DefaultPort
	// when 0).
	Host string
	Port int
	// User is the account to log in as.
	User string
	// Auth are the ways to authenticate, tried in order (see PasswordAuth
	// and KeyFileAuth).
	Auth []ssh.AuthMethod
	// HostKeys says which host keys to accept.
	HostKeys HostKeyPolicy
	// ConnectTimeout bounds one attempt: TCP connect, SSH handshake and
	// authentication (DefaultConnectTimeout when 0).
	ConnectTimeout time.Duration
	// Retries is how many more attempts Dial makes after one fails for a
	// reason that may pass (a refused or dropped connection, a timeout);
	// a host key or authentication failure is never retried. Dial also
	// stops when its context ends.
	Retries int
	// RetryDelay is the pause between attempts (DefaultRetryDelay when 0).
	RetryDelay time.Duration
	// KeepaliveInterval is how often an idle-or-not connection sends a
	// keepalive request (DefaultKeepaliveInterval when 0; negative: never).
	// After KeepaliveCountMax intervals without an answer the connection is
	// closed, and every call on it fails.
	KeepaliveInterval time.Duration
	KeepaliveCountMax int
	// Logger gets the transport's logs (slog.Default() when nil).
	Logger *slog.Logger
}

func (cfg Config) withDefaults() Config {
	if cfg.Port == 0 {
		cfg.Port = DefaultPort
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.RetryDelay <= 0 {
		cfg.RetryDelay = DefaultRetryDelay
	}
	if cfg.KeepaliveInterval == 0 {
		cfg.KeepaliveInterval = DefaultKeepaliveInterval
	}
	if cfg.KeepaliveCountMax <= 0 {
		cfg.KeepaliveCountMax = DefaultKeepaliveCountMax
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return cfg
}

// target names the account and server as user@host:port.
func (cfg Config) target() string {
	return cfg.User + "@" + net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port))
}

// Client is one SSH connection. Its methods are safe for concurrent use;
// each call opens a session of its own.
type Client struct {
	ssh    *ssh.Client
	target string
	log    *slog.Logger

	done      chan struct{}
	closeOnce sync.Once
	mu        sync.Mutex
	err       error // why the connection ended
}

// Dial connects and authenticates, retrying as cfg says.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	cfg = cfg.withDefaults()
	switch {
	case cfg.Host == "":
		return nil, errors.New("ssh: no host to connect to")
	case cfg.User == "":
		return nil, fmt.Errorf("ssh: no user to log in to %s as", cfg.Host)
	case len(cfg.Auth) == 0:
		return nil, fmt.Errorf("ssh: no password or key to log in to %s with", cfg.target())
	}
	addr := net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port))
	check, algorithms, err := cfg.HostKeys.callback(addr, cfg.Logger)
	if err != nil {
		return nil, err
	}
	sshCfg := &ssh.ClientConfig{
		User:              cfg.User,
		Auth:              cfg.Auth,
		HostKeyCallback:   check,
		HostKeyAlgorithms: algorithms,
		Timeout:           cfg.ConnectTimeout,
	}
	attempts := cfg.Retries + 1
	for attempt := 1; ; attempt++ {
		conn, err := dialOnce(ctx, addr, cfg.ConnectTimeout, sshCfg)
		if err == nil {
			c := &Client{ssh: conn, target: cfg.target(), log: cfg.Logger, done: make(chan struct{})}
			go c.watch()
			if cfg.KeepaliveInterval > 0 {
				go c.keepalive(cfg.KeepaliveInterval, cfg.KeepaliveCountMax)
			}
			return c, nil
		}
		if permanent(err) || attempt >= attempts || ctx.Err() != nil {
			if attempts > 1 {
				return nil, fmt.Errorf("ssh: connecting to %s (attempt %d of %d): %w", cfg.target(), attempt, attempts, err)
			}
			return nil, fmt.Errorf("ssh: connecting to %s: %w", cfg.target(), err)
		}
		cfg.Logger.Debug("ssh: connection attempt failed; retrying", "target", cfg.target(), "attempt", attempt, "of", attempts, "error", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("ssh: connecting to %s (gave up after attempt %d: %w): %w", cfg.target(), attempt, ctx.Err(), err)
		case <-time.After(cfg.RetryDelay):
		}
	}
}

// dialOnce makes one attempt, bounded by timeout and ctx.
func dialOnce(ctx context.Context, addr string, timeout time.Duration, cfg *ssh.ClientConfig) (*ssh.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	// The handshake reads and writes the socket: a deadline bounds it, and
	// the end of ctx moves the deadline to now.
	deadline, _ := ctx.Deadline()
	_ = nc.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	conn, chans, reqs, err := ssh.NewClientConn(nc, addr, cfg)
	if !stop() && err == nil {
		conn.Close()
		return nil, fmt.Errorf("ssh handshake: %w", ctx.Err())
	}
	if err != nil {
		if ctx.Err() != nil && !permanent(err) {
			return nil, fmt.Errorf("%w (%w)", err, ctx.Err())
		}
		return nil, err
	}
	_ = nc.SetDeadline(time.Time{})
	return ssh.NewClient(conn, chans, reqs), nil
}

// permanent says whether a failed attempt would fail again the same way.
func permanent(err error) bool {
	var hk *HostKeyError
	if errors.As(err, &hk) {
		return true
	}
	msg := err.Error()
	for _, s := range []string{"unable to authenticate", "no common algorithm", "knownhosts:", "host key"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// String names the connection as user@host:port.
func (c *Client) String() string { return c.target }

// Done is closed when the connection has ended (Close, a network failure,
// or keepalives without an answer).
func (c *Client) Done() <-chan struct{} { return c.done }

// Err says why the connection ended; nil while it is open.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close ends the connection. Remote commands still running are not
// stopped by it (see Run and RemoveWorkspace).
func (c *Client) Close() error {
	c.fail(errors.New("closed"))
	return nil
}

func (c *Client) fail(err error) {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.err = err
		c.mu.Unlock()
		_ = c.ssh.Close()
	})
}

// watch notices the end of the connection.
func (c *Client) watch() {
	err := c.ssh.Wait()
	if err == nil {
		err = errors.New("the server closed the connection")
	}
	c.fail(fmt.Errorf("connection to %s lost: %w", c.target, err))
	close(c.done)
}

// keepalive sends a keepalive request every interval; OpenSSH answers it
// (with a failure, which is an answer all the same). When no answer comes
// within interval × countMax the connection is closed.
func (c *Client) keepalive(interval time.Duration, countMax int) {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-ticker.C:
		}
		answered := make(chan error, 1)
		go func() {
			_, _, err := c.ssh.SendRequest("keepalive@openssh.com", true, nil)
			answered <- err
		}()
		wait := interval * time.Duration(countMax)
		select {
		case <-c.done:
			return
		case err := <-answered:
			if err != nil {
				c.fail(fmt.Errorf("connection to %s lost: keepalive: %w", c.target, err))
				return
			}
		case <-time.After(wait):
			c.log.Warn("ssh: server stopped answering keepalives; closing the connection", "target", c.target, "waited", wait)
			c.fail(fmt.Errorf("connection to %s lost: no answer to keepalives for %s", c.target, wait))
			return
		}
	}
}

// connErr describes a failed call, with why the connection ended if it
// did.
func (c *Client) connErr(err error) error {
	if cerr := c.Err(); cerr != nil {
		return fmt.Errorf("%w (%w)", err, cerr)
	}
	return err
}
