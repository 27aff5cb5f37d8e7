package docker

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/registry"
	"golang.org/x/crypto/bcrypt"

	"github.com/berthci/berth/sdk"
)

// startAuthRegistry starts a docker-registry of its own on a free port of
// 127.0.0.1 that wants user:password (htpasswd), and stops it when the test
// ends. It returns the registry's address.
func startAuthRegistry(t *testing.T, user, password string) string {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		t.Skipf("no docker-registry (%v): %s", err, setupHint)
	}
	dir := t.TempDir()
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "htpasswd"), []byte(user+":"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	conf := fmt.Sprintf(`version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: %s/data
http:
  addr: %s
auth:
  htpasswd:
    realm: berth-test
    path: %s/htpasswd
`, dir, addr, dir)
	if err := os.WriteFile(filepath.Join(dir, "config.yml"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	log, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	cmd := exec.Command(bin, "serve", filepath.Join(dir, "config.yml"))
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	hc := http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := hc.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusUnauthorized {
				return addr
			}
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(dir, "registry.log"))
			t.Fatalf("the registry on %s did not come up (want 401 on /v2/): %v; its log:\n%s", addr, err, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestPrivateRegistry(t *testing.T) {
	c := engineClient(t)
	image := testImage(t, c, "berth-test/busybox", imageOptions{files: map[string]string{"version": "private\n"}})
	const user, password = "berth", "s3cret-Pass"
	addr := startAuthRegistry(t, user, password)
	remote := addr + "/berth-test/private:v1"
	pushImage(t, c, image, remote, registry.AuthConfig{Username: user, Password: password, ServerAddress: addr})
	t.Cleanup(func() { removeImage(t, c, remote) })
	authJSON := func(pass string) string {
		auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
		return fmt.Sprintf(`{"auths": {"http://%s/v2/": {"auth": %q}}}`, addr, auth)
	}
	tests := []struct {
		name     string
		settings map[string]any
		job      func(j *sdk.Job)
		wantErr  []string
	}{
		{name: "anonymous", wantErr: []string{remote, "registry " + addr + " refused the login", "DOCKER_AUTH_CONFIG"}},
		{name: "wrong_password", job: func(j *sdk.Job) {
			j.Credentials = []sdk.Credential{{Registry: addr, Username: user, Password: "wrong"}}
		}, wantErr: []string{"refused the login"}},
		{name: "job_credentials", job: func(j *sdk.Job) {
			j.Credentials = []sdk.Credential{{Registry: "other.example", Username: "x", Password: "y"}, {Registry: addr, Username: user, Password: password}}
		}},
		{name: "job_docker_auth_config", job: func(j *sdk.Job) {
			j.ExecutorVariables = map[string]string{"DOCKER_AUTH_CONFIG": authJSON(password)}
		}},
		{name: "runner_auth_config", settings: map[string]any{"auth_config": authJSON(password)}},
		{name: "job_credentials_before_runner's", settings: map[string]any{"auth_config": authJSON("wrong")}, job: func(j *sdk.Job) {
			j.Credentials = []sdk.Credential{{Registry: addr, Username: user, Password: password}}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			removeImage(t, c, remote)
			e := newExecutor(t, tt.settings)
			job := newJob(remote)
			if tt.job != nil {
				tt.job(&job)
			}
			h, err := e.Prepare(t.Context(), job)
			defer e.Cleanup(context.Background(), sdk.Handle{JobID: job.ID})
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatal("the job pulled its image; want an error")
				}
				t.Logf("the error: %v", err)
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("the error does not say %q: %v", w, err)
					}
				}
				if strings.Contains(err.Error(), password) {
					t.Errorf("the error shows the password: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if out := mustRun(t, e, h, "cat /version"); out != "private\n" {
				t.Errorf("the job's image says %q, want %q", out, "private\n")
			}
		})
	}
}
