// Package registrytest runs a real OCI registry for tests: Debian's
// docker-registry (the CNCF distribution registry), on a free port of
// 127.0.0.1, with its own configuration and storage in a test's temporary
// folder. Tests that use it skip when the binary is missing.
package registrytest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berthci/berth/internal/syncbuf"
)

// Binary is where Debian's docker-registry package puts the registry.
const Binary = "/usr/bin/docker-registry"

// SkipMessage is how tests skip without the registry.
const SkipMessage = "install docker-registry (apt-get install docker-registry)"

// Registry is a running registry.
type Registry struct {
	// Host is its address, 127.0.0.1:PORT: the registry part of a
	// reference; it speaks plain HTTP.
	Host string

	cmd  *exec.Cmd
	log  *syncbuf.Buffer
	done chan struct{}
	once sync.Once
}

// Start starts a registry for the test and stops it when the test ends.
func Start(t testing.TB) *Registry {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		bin = Binary
		if _, err := os.Stat(bin); err != nil {
			t.Skip(SkipMessage)
		}
	}
	// The port is free when picked but could be taken before the registry
	// binds it: try a few.
	var last error
	for range 3 {
		r, err := start(t, bin)
		if err == nil {
			t.Cleanup(r.Stop)
			return r
		}
		last = err
	}
	t.Fatalf("starting docker-registry: %v", last)
	return nil
}

func start(t testing.TB, bin string) (*Registry, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir := t.TempDir()
	host := "127.0.0.1:" + strconv.Itoa(port)
	config := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
  secret: berth-registrytest
`, filepath.Join(dir, "storage"), host)
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		return nil, err
	}
	r := &Registry{Host: host, log: &syncbuf.Buffer{}, done: make(chan struct{})}
	r.cmd = exec.Command(bin, "serve", cfgPath)
	// Its own environment: REGISTRY_* variables would override the
	// configuration.
	r.cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + dir}
	r.cmd.Stdout, r.cmd.Stderr = r.log, r.log
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := r.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		r.cmd.Wait()
		close(r.done)
	}()
	if err := r.waitReady(30 * time.Second); err != nil {
		r.Stop()
		return nil, fmt.Errorf("%w\nregistry log:\n%s", err, r.log.String())
	}
	return r, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitReady polls the registry's /v2/ until it answers, it exits, or the
// bound passes.
func (r *Registry) waitReady(bound time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+r.Host+"/v2/", nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-r.done:
			return errors.New("docker-registry exited at start")
		case <-ctx.Done():
			return fmt.Errorf("docker-registry did not answer on %s within %s", r.Host, bound)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop stops the registry (SIGTERM, then SIGKILL) and waits for it; the
// address then refuses connections. It may be called more than once.
func (r *Registry) Stop() {
	r.once.Do(func() {
		r.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			r.cmd.Process.Kill()
			<-r.done
		}
	})
}

// Log is what the registry printed.
func (r *Registry) Log() string { return r.log.String() }
