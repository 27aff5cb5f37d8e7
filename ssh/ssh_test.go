package ssh_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/sdk/archive"
	"github.com/berthci/berth/ssh"
	"github.com/berthci/berth/sshexec"
	"github.com/berthci/berth/sshexec/sshdtest"
)

func settingsFor(s *sshdtest.Server) map[string]any {
	return map[string]any{
		"host":             s.Host,
		"port":             s.Port,
		"user":             s.Account.User,
		"identity_file":    s.Account.ClientKeyFile,
		"known_hosts_file": s.KnownHostsFile,
	}
}

// runJob prepares a job, runs script and cleans up.
func runJob(t *testing.T, settings map[string]any, script string) (string, error) {
	t.Helper()
	e := ssh.New(ssh.WithLogger(slog.New(slog.DiscardHandler)))
	if err := e.Configure(t.Context(), settings); err != nil {
		return "", err
	}
	h, err := e.Prepare(t.Context(), sdk.Job{ID: "job-" + archive.JobDirName(t.Name()), Shell: "sh"})
	if err != nil {
		return "", err
	}
	defer func() {
		if err := e.Cleanup(t.Context(), h); err != nil {
			t.Errorf("Cleanup: %v", err)
		}
	}()
	var out bytes.Buffer
	code, err := e.Run(t.Context(), h, sdk.Step{Name: "script", Script: script, Shell: "sh"}, sdk.Output{Stdout: &out, Stderr: &out})
	if err == nil && code != 0 {
		t.Errorf("the step exited %d: %s", code, out.String())
	}
	return out.String(), err
}

// Strict host key checking is on by default: an unknown host and a changed
// key are refused with an error naming the host and the key's fingerprint;
// disable_strict_host_key_checking accepts both.
func TestHostKeyChecking(t *testing.T) {
	s := sshdtest.Start(t)
	_, otherPub, _ := ed25519.GenerateKey(rand.Reader)
	other, err := gossh.NewPublicKey(ed25519.PrivateKey(otherPub).Public())
	if err != nil {
		t.Fatal(err)
	}
	fp := gossh.FingerprintSHA256(s.HostKey)
	tests := []struct {
		name    string
		known   string
		strict  any // nil: the default
		wantErr []string
	}{
		{"known", knownhosts.Line([]string{s.Addr()}, s.HostKey), nil, nil},
		{"unknown", "", nil, []string{"host " + knownhosts.Normalize(s.Addr()) + " is not in the known_hosts file", fp, "disable_strict_host_key_checking"}},
		{"changed", knownhosts.Line([]string{s.Addr()}, other), nil, []string{"host key of " + knownhosts.Normalize(s.Addr()) + " does not match", fp, gossh.FingerprintSHA256(other)}},
		{"unknown, strict checking off", "", true, nil},
		{"changed, strict checking off", knownhosts.Line([]string{s.Addr()}, other), true, nil},
		{"changed, strict checking on", knownhosts.Line([]string{s.Addr()}, other), false, []string{"does not match"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			settings := settingsFor(s)
			settings["known_hosts_file"] = filepath.Join(t.TempDir(), "known_hosts")
			if err := os.WriteFile(settings["known_hosts_file"].(string), []byte(tt.known+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if tt.strict != nil {
				settings["disable_strict_host_key_checking"] = tt.strict
			}
			out, err := runJob(t, settings, "echo reached")
			if tt.wantErr == nil {
				if err != nil || out != "reached\n" {
					t.Fatalf("the job: %v, output %q", err, out)
				}
				return
			}
			var hk *sshexec.HostKeyError
			if !errors.As(err, &hk) {
				t.Fatalf("the job: %v; want a host key error", err)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("the error %q does not say %q", err, w)
				}
			}
		})
	}
}

func TestConfigure(t *testing.T) {
	dir := t.TempDir()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	block, err := gossh.MarshalPrivateKeyWithPassphrase(priv, "", []byte("pw"))
	if err != nil {
		t.Fatal(err)
	}
	encrypted := filepath.Join(dir, "encrypted")
	if err := os.WriteFile(encrypted, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	base := map[string]any{"host": "127.0.0.1", "user": "u", "password": "p"}
	tests := []struct {
		name    string
		change  map[string]any
		wantErr string
	}{
		{"password", nil, ""},
		{"encrypted key with its passphrase", map[string]any{"password": "", "identity_file": encrypted, "passphrase": "pw"}, ""},
		{"no way to log in", map[string]any{"password": ""}, `"password" or "identity_file"`},
		{"no host", map[string]any{"host": ""}, `"host" is required`},
		{"encrypted key, no passphrase", map[string]any{"identity_file": encrypted}, "is encrypted and no passphrase is set"},
		{"missing key", map[string]any{"identity_file": filepath.Join(dir, "none")}, `setting "identity_file"`},
		{"bad port", map[string]any{"port": 70000}, `"port"`},
		{"no known_hosts, strict", map[string]any{"known_hosts_file": ""}, "known_hosts_file"},
		{"no known_hosts, not strict", map[string]any{"known_hosts_file": "", "disable_strict_host_key_checking": true}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			settings := map[string]any{}
			for k, v := range base {
				settings[k] = v
			}
			for k, v := range tt.change {
				settings[k] = v
			}
			err := ssh.New().Configure(t.Context(), settings)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("Configure: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("Configure: %v; want an error saying %s", err, tt.wantErr)
			}
		})
	}
}

func TestPasswordLogin(t *testing.T) {
	s := sshdtest.Start(t, sshdtest.WithPassword())
	settings := settingsFor(s)
	delete(settings, "identity_file")
	settings["password"] = s.Account.Password
	if out, err := runJob(t, settings, "id -un"); err != nil || out != s.Account.User+"\n" {
		t.Fatalf("a job logged in with a password: %v, output %q", err, out)
	}
}

// Variables reach the script through the script, not through the
// session's environment (which sshd filters with AcceptEnv).
func TestVariablesNeedNoAcceptEnv(t *testing.T) {
	s := sshdtest.Start(t, sshdtest.WithConfig("AcceptEnv NOTHING_AT_ALL"))
	out, err := runJob(t, settingsFor(s), "export CI_JOB_TOKEN='t0k3n'\nsh -c 'echo \"$CI_JOB_TOKEN\"'")
	if err != nil || out != "t0k3n\n" {
		t.Fatalf("the job: %v, output %q", err, out)
	}
}
