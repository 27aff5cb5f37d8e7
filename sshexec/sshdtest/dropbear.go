package sshdtest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Dropbear is the absolute path of Dropbear's SSH server, the other SSH
// server found on small machines (routers, embedded boards, containers).
const Dropbear = "/usr/sbin/dropbear"

// StartDropbear starts Dropbear on a free 127.0.0.1 port for a temporary
// user (Dropbear reads only ~/.ssh/authorized_keys, so this needs root)
// and stops it when the test ends. The Server is used like Start's.
func StartDropbear(t testing.TB) *Server {
	t.Helper()
	if _, err := os.Stat(Dropbear); err != nil {
		t.Skipf("%s is missing: install Dropbear's server (Debian: apt-get install dropbear-bin; .ci/setup-ssh.sh does it)", Dropbear)
	}
	if os.Geteuid() != 0 {
		t.Skip("a Dropbear test server needs a user made for the test (Dropbear reads only ~/.ssh/authorized_keys), which needs root")
	}
	acct := NewAccount(t)
	dir := t.TempDir()
	hostKeyFile := filepath.Join(dir, "host_ed25519")
	if out, err := exec.Command("dropbearkey", "-t", "ed25519", "-f", hostKeyFile).CombinedOutput(); err != nil {
		t.Fatalf("dropbearkey: %v: %s", err, out)
	}
	pubLine, err := exec.Command("dropbearkey", "-y", "-f", hostKeyFile).Output()
	if err != nil {
		t.Fatalf("dropbearkey -y: %v", err)
	}
	var hostPub ssh.PublicKey
	for line := range bytes.Lines(pubLine) {
		if pub, _, _, _, err := ssh.ParseAuthorizedKey(line); err == nil {
			hostPub = pub
			break
		}
	}
	if hostPub == nil {
		t.Fatalf("no public key in dropbearkey's output: %s", pubLine)
	}
	s := &Server{Host: "127.0.0.1", Account: acct, HostKey: hostPub, Dir: dir, logFile: filepath.Join(dir, "dropbear.log")}
	var lastErr error
	for range 3 { // the free port may be taken before Dropbear binds it
		s.Port = FreePort(t)
		// -F: foreground, -E: log to stderr, -s: no passwords, -m: no
		// motd, -P: its pid file, not the system's.
		cmd := exec.Command(Dropbear, "-F", "-E", "-s", "-m", "-p", s.Addr(), "-r", hostKeyFile, "-P", filepath.Join(dir, "dropbear.pid"))
		if lastErr = s.run(t, cmd); lastErr == nil {
			break
		}
	}
	if lastErr != nil {
		t.Fatalf("starting dropbear: %v", lastErr)
	}
	s.KnownHostsFile = filepath.Join(dir, "known_hosts")
	writeFile(t, s.KnownHostsFile, []byte(knownhosts.Line([]string{s.Addr()}, hostPub)+"\n"), 0o600)
	return s
}
