package sshexec_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/berthci/berth/sdk/archive"
	"github.com/berthci/berth/sshexec"
	"github.com/berthci/berth/sshexec/sshdtest"
)

// All tests here talk to a real OpenSSH sshd on 127.0.0.1 (sshdtest), so
// "the remote host" is this machine: its processes and files can be
// checked directly.

// wait bounds every wait for an event in these tests.
const wait = 30 * time.Second

func dial(t *testing.T, cfg sshexec.Config) *sshexec.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	c, err := sshexec.Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func workspace(t *testing.T, c *sshexec.Client) string {
	t.Helper()
	dir, err := c.MakeWorkspace(t.Context(), "builds/"+archive.JobDirName(t.Name()))
	if err != nil {
		t.Fatalf("MakeWorkspace: %v", err)
	}
	t.Cleanup(func() {
		if err := c.RemoveWorkspace(context.Background(), dir); err != nil {
			t.Errorf("RemoveWorkspace: %v", err)
		}
	})
	return dir
}

func TestRun(t *testing.T) {
	for _, srv := range sshServers {
		t.Run(srv.name, func(t *testing.T) { testRun(t, srv.start(t)) })
	}
}

func testRun(t *testing.T, s *sshdtest.Server) {
	c := dial(t, s.Config(t))
	dir := workspace(t, c)
	big := strings.Repeat("# a script much larger than a command line may be\n", 40000) + "echo big"
	tests := []struct {
		name, shell, script  string
		wantCode             int
		wantStdout, wantErrs string
	}{
		{"exit 0", "sh", "true", 0, "", ""},
		{"exit 7", "sh", "exit 7", 7, "", ""},
		{"streams apart", "sh", "echo out; echo err >&2; echo out2", 0, "out\nout2\n", "err\n"},
		{"killed by SIGKILL", "sh", "kill -9 $$", 137, "", ""},
		{"killed by SIGTERM", "sh", "kill -TERM $$", 143, "", ""},
		{"bash", "bash", `echo "${BASH_VERSION:+bash}"`, 0, "bash\n", ""},
		{"sh is not bash", "sh", `echo "${BASH_VERSION:-not bash}"`, 0, "not bash\n", ""},
		{"bash when installed", "", `echo "${BASH_VERSION:+bash}"`, 0, "bash\n", ""},
		{"runs in the build directory", "sh", "pwd", 0, dir + "\n", ""},
		{"stdin is empty", "sh", "cat; echo end", 0, "end\n", ""},
		{"exported variables", "bash", "export V='a b'\nsh -c 'echo \"$V\"'", 0, "a b\n", ""},
		{"no login chatter", "sh", `printf x`, 0, "x", ""},
		{"script larger than ARG_MAX", "sh", big, 0, "big\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code, err := c.Run(t.Context(), sshexec.Stage{Dir: dir, Script: tt.script, Shell: tt.shell, Stdout: &stdout, Stderr: &stderr})
			if err != nil || code != tt.wantCode || stdout.String() != tt.wantStdout || stderr.String() != tt.wantErrs {
				t.Errorf("Run: exit code %d, error %v, stdout %q, stderr %q; want %d, no error, %q, %q",
					code, err, stdout.String(), stderr.String(), tt.wantCode, tt.wantStdout, tt.wantErrs)
			}
		})
	}
	t.Run("no script file left", func(t *testing.T) {
		entries, err := os.ReadDir(dir + ".tmp")
		if err != nil || len(entries) != 0 {
			t.Errorf("%s.tmp holds %v (%v) after the stages ended, want nothing", dir, entries, err)
		}
	})
	t.Run("shell missing", func(t *testing.T) {
		_, err := c.Run(t.Context(), sshexec.Stage{Dir: dir, Script: "true", Shell: "fish"})
		if err == nil || !strings.Contains(err.Error(), "unknown shell fish") {
			t.Errorf("Run with shell fish: %v; want an error saying the stage did not start", err)
		}
	})
	t.Run("build directory missing", func(t *testing.T) {
		_, err := c.Run(t.Context(), sshexec.Stage{Dir: dir + "-gone", Script: "true", Shell: "sh"})
		if err == nil || !strings.Contains(err.Error(), "did not start") {
			t.Errorf("Run in a missing directory: %v; want an error saying the stage did not start", err)
		}
	})
}

// markerProcesses lists the processes whose environment holds
// BERTH_TEST_MARKER=marker (zombies have ended and do not count).
func markerProcesses(marker string) []int {
	entries, _ := os.ReadDir("/proc")
	want := []byte("BERTH_TEST_MARKER=" + marker + "\x00")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || sshdtest.ProcessGone(pid) {
			continue
		}
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err == nil && (bytes.HasPrefix(env, want) || bytes.Contains(env, append([]byte{0}, want...))) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// After a cancel nothing of the stage is left on the remote side: not its
// shell, not its children and grandchildren, not those that ignore
// SIGTERM. The stage's TERM trap runs within the grace period.
// sshServers are the SSH servers the stage tests run against: OpenSSH,
// and Dropbear, which runs a session's command as a child of the
// session's leader rather than as the leader.
var sshServers = []struct {
	name  string
	start func(testing.TB) *sshdtest.Server
}{
	{"openssh", func(t testing.TB) *sshdtest.Server { return sshdtest.Start(t) }},
	{"dropbear", sshdtest.StartDropbear},
}

func TestCancel(t *testing.T) {
	for _, srv := range sshServers {
		t.Run(srv.name, func(t *testing.T) { testCancel(t, srv.start(t)) })
	}
}

func testCancel(t *testing.T, s *sshdtest.Server) {
	c := dial(t, s.Config(t))
	dir := workspace(t, c)
	tests := []struct {
		name     string
		script   string
		grace    time.Duration
		wantOut  []string
		wantCode int
	}{
		{
			name: "trap ends the script",
			script: `trap 'echo "got TERM"; kill $child 2>/dev/null; echo "cleaned up"; exit 3' TERM
sh -c 'sleep 1000 & sleep 1000 & wait' &
child=$!
echo ready
wait`,
			grace:    wait,
			wantOut:  []string{"got TERM", "cleaned up"},
			wantCode: 3,
		},
		{
			name: "TERM ignored by all",
			script: `trap 'echo "got TERM"' TERM
(trap '' TERM; sleep 1000 & sh -c 'trap "" TERM; sleep 1000' & wait) &
echo ready
while :; do sleep 1000; done`,
			grace:    time.Second,
			wantOut:  []string{"got TERM"},
			wantCode: 137,
		},
		{
			name:     "grandchildren in a pipeline",
			script:   "echo ready\nsleep 1000 | cat | cat",
			grace:    time.Second,
			wantCode: 143,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			marker := hex.EncodeToString([]byte(t.Name()))[:24]
			script := "export BERTH_TEST_MARKER=" + marker + "\n" + tt.script
			stdout := sshdtest.NewWatch("ready\n")
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			type result struct {
				code int
				err  error
			}
			done := make(chan result, 1)
			go func() {
				code, err := c.Run(ctx, sshexec.Stage{Dir: dir, Script: script, Shell: "sh", GracePeriod: tt.grace, Stdout: stdout})
				done <- result{code, err}
			}()
			select {
			case <-stdout.Seen():
			case r := <-done:
				t.Fatalf("the stage ended before it was ready: %+v, output %q", r, stdout)
			case <-time.After(wait):
				t.Fatalf("the stage was not ready within %s: output %q", wait, stdout)
			}
			// The script's processes are started by now (the last one may
			// still be starting).
			deadline := time.Now().Add(wait)
			for len(markerProcesses(marker)) < 2 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			before := markerProcesses(marker)
			cancel()
			var r result
			select {
			case r = <-done:
			case <-time.After(tt.grace + wait):
				t.Fatalf("Run did not return after the cancel")
			}
			if !errors.Is(r.err, context.Canceled) || r.code != tt.wantCode {
				t.Errorf("Run after cancel: exit code %d, error %v; want %d and an error wrapping context.Canceled", r.code, r.err, tt.wantCode)
			}
			for _, w := range tt.wantOut {
				if !strings.Contains(stdout.String(), w) {
					t.Errorf("output %q lacks %q", stdout, w)
				}
			}
			if len(before) < 2 {
				t.Fatalf("the test saw only %v of the script's processes before the cancel", before)
			}
			if left := markerProcesses(marker); len(left) > 0 {
				t.Errorf("processes of the stage still run after Run returned: %v (before the cancel: %v)", left, before)
				for _, pid := range left {
					_ = syscall.Kill(pid, syscall.SIGKILL) // ours: the marker says so
				}
			}
		})
	}
}

// What a stage leaves running in the background is killed when it ends,
// and does not keep Run from returning.
func TestRunKillsLeftovers(t *testing.T) {
	for _, srv := range sshServers {
		t.Run(srv.name, func(t *testing.T) { testRunKillsLeftovers(t, srv.start(t)) })
	}
}

func testRunKillsLeftovers(t *testing.T, s *sshdtest.Server) {
	c := dial(t, s.Config(t))
	dir := workspace(t, c)
	var stdout bytes.Buffer
	code, err := c.Run(t.Context(), sshexec.Stage{Dir: dir, Shell: "sh", Stdout: &stdout,
		Script: "sleep 1000 &\necho $!\n(trap '' TERM HUP; exec sleep 1000 >/dev/null 2>&1) &\necho $!"})
	if err != nil || code != 0 {
		t.Fatalf("Run: %d, %v", code, err)
	}
	for _, f := range strings.Fields(stdout.String()) {
		pid, _ := strconv.Atoi(f)
		if !sshdtest.ProcessGone(pid) {
			t.Errorf("background process %d still runs after the stage", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// RemoveWorkspace, from another connection (as after a plugin crash),
// kills the stages still running there before it removes the directories.
func TestRemoveWorkspaceKillsStages(t *testing.T) {
	s := sshdtest.Start(t)
	c := dial(t, s.Config(t))
	dir, err := c.MakeWorkspace(t.Context(), "builds/remove-me")
	if err != nil {
		t.Fatal(err)
	}
	stdout := sshdtest.NewWatch("ready\n")
	done := make(chan error, 1)
	go func() {
		_, err := c.Run(context.Background(), sshexec.Stage{Dir: dir, Shell: "sh", Stdout: stdout,
			Script: "trap '' TERM\nsleep 1000 &\necho \"pids $$ $!\"\necho ready\nwait"})
		done <- err
	}()
	select {
	case <-stdout.Seen():
	case <-time.After(wait):
		t.Fatalf("the stage was not ready: %q", stdout)
	}
	other := dial(t, s.Config(t))
	if err := other.RemoveWorkspace(t.Context(), dir); err != nil {
		t.Fatalf("RemoveWorkspace: %v", err)
	}
	for _, f := range strings.Fields(strings.TrimPrefix(strings.SplitN(stdout.String(), "\n", 2)[0], "pids ")) {
		pid, _ := strconv.Atoi(f)
		if !sshdtest.ProcessGone(pid) {
			t.Errorf("process %d of the stage still runs after RemoveWorkspace", pid)
		}
	}
	for _, d := range []string{dir, dir + ".tmp"} {
		if _, err := os.Lstat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is still there after RemoveWorkspace (%v)", d, err)
		}
	}
	select {
	case <-done:
	case <-time.After(wait):
		t.Fatal("Run did not return after its stage was killed")
	}
	if err := other.RemoveWorkspace(t.Context(), dir); err != nil {
		t.Errorf("RemoveWorkspace again: %v", err)
	}
}

func TestHostKeys(t *testing.T) {
	s := sshdtest.Start(t)
	_, otherKey := sshdtest.NewKeyPair(t)
	fp := ssh.FingerprintSHA256(s.HostKey)
	line := func(names []string, key ssh.PublicKey) string { return knownhosts.Line(names, key) + "\n" }
	tests := []struct {
		name      string
		known     string // known_hosts contents; "-" for no file
		alias     string
		acceptAny bool
		wantErr   string // "" for success
		wantLog   string // logged when accepted anyway
	}{
		{"known", line([]string{s.Addr()}, s.HostKey), "", false, "", ""},
		{"unknown", line([]string{"elsewhere.example"}, s.HostKey), "", false, "is not in the known_hosts file", ""},
		{"no file", "-", "", false, "is not in the known_hosts file", ""},
		{"changed", line([]string{s.Addr()}, otherKey), "", false, "does not match the known_hosts file", ""},
		{"changed, next to the right one", line([]string{s.Addr()}, otherKey) + line([]string{s.Addr()}, s.HostKey), "", false, "", ""},
		{"unknown, not strict", "", "", true, "", "level=DEBUG msg=\"ssh: accepting a host key that strict checking would refuse\""},
		{"changed, not strict", line([]string{s.Addr()}, otherKey), "", true, "", "level=WARN msg=\"ssh: accepting a host key that strict checking would refuse\""},
		{"by alias", line([]string{"my-vm"}, s.HostKey), "my-vm", false, "", ""},
		{"alias unknown", line([]string{s.Addr()}, s.HostKey), "my-vm", false, "host my-vm is not in the known_hosts file", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "known_hosts")
			if tt.known != "-" {
				if err := os.WriteFile(file, []byte(tt.known), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			cfg := s.Config(t)
			cfg.HostKeys = sshexec.HostKeyPolicy{KnownHostsFile: file, Alias: tt.alias, AcceptAny: tt.acceptAny}
			cfg.Retries, cfg.RetryDelay = 2, time.Millisecond
			var logs bytes.Buffer
			cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			c, err := sshexec.Dial(t.Context(), cfg)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Dial: %v", err)
				}
				c.Close()
				if tt.wantLog != "" && (!strings.Contains(logs.String(), tt.wantLog) || !strings.Contains(logs.String(), fp)) {
					t.Errorf("accepting the key logged %q; want %q with the fingerprint %s", logs.String(), tt.wantLog, fp)
				}
				return
			}
			var hk *sshexec.HostKeyError
			if !errors.As(err, &hk) {
				t.Fatalf("Dial: %v; want a *sshexec.HostKeyError", err)
			}
			for _, want := range []string{tt.wantErr, fp, file, "attempt 1 of 3"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("the error %q does not say %q", err, want)
				}
			}
		})
	}
}

func TestAuth(t *testing.T) {
	s := sshdtest.Start(t)
	encrypted := filepath.Join(t.TempDir(), "encrypted")
	priv, pub := sshdtest.NewKeyPair(t)
	block, err := ssh.MarshalPrivateKeyWithPassphrase(priv, "test", []byte("open sesame"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(encrypted, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	appendFile(t, s.Account.AuthorizedKeysFile, ssh.MarshalAuthorizedKey(pub))
	stranger := filepath.Join(t.TempDir(), "stranger")
	strangerKey, _ := sshdtest.NewKeyPair(t)
	block, _ = ssh.MarshalPrivateKey(strangerKey, "stranger")
	if err := os.WriteFile(stranger, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		file, pass string
		wantErr    string // from KeyFileAuth or Dial
	}{
		{"key", s.Account.ClientKeyFile, "", ""},
		{"encrypted key", encrypted, "open sesame", ""},
		{"encrypted key, no passphrase", encrypted, "", "is encrypted and no passphrase is set"},
		{"encrypted key, wrong passphrase", encrypted, "open barley", "decrypting the identity file"},
		{"key not authorized", stranger, "", "unable to authenticate"},
		{"no such file", filepath.Join(t.TempDir(), "none"), "", "reading the identity file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := s.Config(t)
			cfg.Retries, cfg.RetryDelay = 3, time.Millisecond
			auth, err := sshexec.KeyFileAuth(tt.file, tt.pass)
			if err == nil {
				cfg.Auth = []ssh.AuthMethod{auth}
				var c *sshexec.Client
				c, err = sshexec.Dial(t.Context(), cfg)
				if err == nil {
					c.Close()
				}
			}
			checkErr(t, err, tt.wantErr)
			if tt.wantErr == "unable to authenticate" && !strings.Contains(err.Error(), "attempt 1 of 4") {
				t.Errorf("a refused login was retried: %v", err)
			}
		})
	}
}

func TestPasswordAuth(t *testing.T) {
	s := sshdtest.Start(t, sshdtest.WithPassword())
	for _, tt := range []struct {
		name, password, wantErr string
	}{
		{"right", s.Account.Password, ""},
		{"wrong", s.Account.Password + "x", "unable to authenticate"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := s.Config(t)
			cfg.Auth = sshexec.PasswordAuth(tt.password)
			c, err := sshexec.Dial(t.Context(), cfg)
			if err == nil {
				c.Close()
			}
			checkErr(t, err, tt.wantErr)
		})
	}
}

func checkErr(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Errorf("error %v, want none", err)
	case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
		t.Errorf("error %v, want one saying %q", err, want)
	}
}

// A host that does not answer is tried Retries+1 times; one that comes up
// between attempts is reached.
func TestDialRetries(t *testing.T) {
	s := sshdtest.Start(t)
	t.Run("nothing listens", func(t *testing.T) {
		cfg := s.Config(t)
		cfg.Port = sshdtest.FreePort(t)
		cfg.Retries, cfg.RetryDelay = 2, time.Millisecond
		_, err := sshexec.Dial(t.Context(), cfg)
		checkErr(t, err, "attempt 3 of 3")
		checkErr(t, err, "connection refused")
	})
	t.Run("comes up later", func(t *testing.T) {
		// A forwarder that refuses connections until it is switched on.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		attempts := make(chan struct{}, 100)
		go func() {
			n := 0
			for {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				n++
				attempts <- struct{}{}
				if n < 3 {
					conn.Close() // as a NAT port whose guest does not listen yet
					continue
				}
				go forward(conn, s.Addr(), nil)
			}
		}()
		cfg := s.Config(t)
		cfg.Port = ln.Addr().(*net.TCPAddr).Port
		cfg.HostKeys = knownAs(t, s, "sshd-under-test")
		cfg.Retries, cfg.RetryDelay = 10, 10*time.Millisecond
		c := dial(t, cfg)
		if _, err := c.Output(t.Context(), "true"); err != nil {
			t.Fatal(err)
		}
		if len(attempts) != 3 {
			t.Errorf("%d connection attempts, want 3 (two dropped, then one through)", len(attempts))
		}
	})
}

// forward copies between conn and a new connection to addr until either
// ends; once frozen is closed it drops everything (a peer gone silent).
func forward(conn net.Conn, addr string, frozen <-chan struct{}) {
	up, err := net.Dial("tcp", addr)
	if err != nil {
		conn.Close()
		return
	}
	pipe := func(dst, src net.Conn) {
		defer dst.Close()
		defer src.Close()
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if err != nil {
				return
			}
			select {
			case <-frozen:
				continue
			default:
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
	}
	go pipe(up, conn)
	pipe(conn, up)
}

// A server that stops answering is noticed through keepalives: the
// connection is closed and calls on it fail saying why.
func TestKeepalive(t *testing.T) {
	s := sshdtest.Start(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	frozen := make(chan struct{})
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { conn.Close() })
			go forward(conn, s.Addr(), frozen)
		}
	}()
	cfg := s.Config(t)
	cfg.Port = ln.Addr().(*net.TCPAddr).Port
	cfg.HostKeys = knownAs(t, s, "sshd-under-test")
	cfg.KeepaliveInterval, cfg.KeepaliveCountMax = 100*time.Millisecond, 30
	c := dial(t, cfg)
	time.Sleep(300 * time.Millisecond) // a few keepalives, answered
	if _, err := c.Output(t.Context(), "true"); err != nil {
		t.Fatalf("the connection to a server that answers: %v", err)
	}
	close(frozen)
	select {
	case <-c.Done():
	case <-time.After(wait):
		t.Fatal("the connection to a silent server was not closed")
	}
	checkErr(t, c.Err(), "no answer to keepalives")
	_, err = c.Output(t.Context(), "true")
	checkErr(t, err, "no answer to keepalives")
}

func TestJobConns(t *testing.T) {
	s := sshdtest.Start(t)
	var conns sshexec.JobConns
	ctx := t.Context()
	a, err := conns.Get(ctx, "a", s.Config(t))
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := conns.Get(ctx, "a", s.Config(t)); again != a {
		t.Errorf("a second Get for job a dialled again")
	}
	if b, _ := conns.Get(ctx, "b", s.Config(t)); b == a {
		t.Errorf("jobs a and b share a connection")
	}
	a.Close()
	if again, err := conns.Get(ctx, "a", s.Config(t)); err != nil || again == a {
		t.Errorf("Get after the connection ended: %v, %v; want a new connection", again, err)
	}
	conns.Close("a")
	conns.Close("b")
	conns.Close("never")
}

// knownAs is a policy that knows the server's key under alias (for
// connections through a forwarder on another port).
func knownAs(t *testing.T, s *sshdtest.Server, alias string) sshexec.HostKeyPolicy {
	t.Helper()
	file := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(file, []byte(knownhosts.Line([]string{alias}, s.HostKey)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return sshexec.HostKeyPolicy{KnownHostsFile: file, Alias: alias}
}

func appendFile(t *testing.T, name string, data []byte) {
	t.Helper()
	f, err := os.OpenFile(name, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
}

func TestMakeWorkspace(t *testing.T) {
	s := sshdtest.Start(t)
	c := dial(t, s.Config(t))
	home, err := c.Output(t.Context(), `cd && pwd`)
	if err != nil {
		t.Fatal(err)
	}
	h := strings.TrimSpace(string(home))
	abs := filepath.Join(t.TempDir(), "abs")
	if err := os.Chmod(filepath.Dir(abs), 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Dir(filepath.Dir(abs)), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ dir, want, wantErr string }{
		{"builds/a", h + "/builds/a", ""},
		{"~/b/", h + "/b", ""},
		{abs, abs, ""},
		{"", "", "cannot be a build directory"},
		{"~", "", "cannot be a build directory"},
	}
	for _, tt := range tests {
		t.Run(tt.dir, func(t *testing.T) {
			got, err := c.MakeWorkspace(t.Context(), tt.dir)
			checkErr(t, err, tt.wantErr)
			if err != nil {
				return
			}
			if got != tt.want {
				t.Errorf("MakeWorkspace(%q) = %q, want %q", tt.dir, got, tt.want)
			}
			if fi, err := os.Stat(got + ".tmp"); err != nil || fi.Mode().Perm() != 0o700 {
				t.Errorf("%s.tmp: %v (%v), want a directory with mode 0700", got, fi, err)
			}
			if err := c.RemoveWorkspace(t.Context(), tt.dir); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(got); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s is still there after RemoveWorkspace(%q)", got, tt.dir)
			}
		})
	}
}
