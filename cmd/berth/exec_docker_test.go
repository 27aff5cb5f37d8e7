package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berthci/berth/docker"
	"github.com/berthci/berth/sdk"
)

// dockerPluginEnv makes this test binary serve the docker executor as an
// external plugin, so that the test does not depend on berth having it
// built in.
const dockerPluginEnv = "BERTH_EXEC_TEST_SERVE_DOCKER"

func init() {
	if os.Getenv(dockerPluginEnv) == "1" {
		sdk.Serve(docker.New())
		os.Exit(0)
	}
}

// TestExecServiceWithDocker runs a job whose service (an HTTP server in a
// busybox image built here) it reaches by its alias, through the docker
// executor. It is skipped when no Docker engine answers.
func TestExecServiceWithDocker(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "docker", "version", "--format", "{{.Server.Version}}").CombinedOutput(); err != nil {
		t.Skipf("no Docker engine answers (docker version: %v: %s); CI starts one with .ci/setup-docker.sh", err, strings.TrimSpace(string(out)))
	}
	image := busyboxImage(t)

	pdir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	wrapper := "#!/bin/sh\n" + dockerPluginEnv + "=1 exec " + strconv.Quote(self) + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(pdir, "berth-executor-docker"), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	dir := writePipeline(t, fmt.Sprintf(`
test:
  image: {name: %[1]s, pull_policy: if-not-present}
  services:
    - name: %[1]s
      pull_policy: if-not-present
      alias: web
      command: ["sh", "-c", "mkdir -p /www && echo service-answers > /www/index.html && exec httpd -f -p 8080 -h /www"]
  script:
    - for i in $(seq 100); do wget -q -O - http://web:8080/index.html && exit 0; sleep 0.2; done; exit 1
`, image))
	out, code := berthIn(t, dir, "exec", "--no-color", "--plugin-dir", pdir, "--executor", "docker", "--docker-pull-policy", "if-not-present")
	if code != 0 || !regexp.MustCompile(`(?m)^service-answers$`).MatchString(out) {
		t.Fatalf("exit %d; the job did not reach its service:\n%s", code, out)
	}
}

// busyboxImage builds (once per engine) a scratch image holding Debian's
// static busybox and its applets, or skips the test.
func busyboxImage(t *testing.T) string {
	t.Helper()
	const image = "berth-exec-test/busybox:1"
	if exec.Command("docker", "image", "inspect", image).Run() == nil {
		return image
	}
	bb := os.Getenv("BERTH_BUSYBOX")
	if bb == "" {
		bb = "/bin/busybox"
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		t.Skipf("no static busybox at %s to build a test image from (apt-get install busybox-static): %v", bb, err)
	}
	ctxDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(ctxDir, "busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	dockerfile := "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nENV PATH=/bin\n"
	if err := os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		t.Fatal(err)
	}
	build := exec.Command("docker", "build", "-q", "-t", image, ctxDir)
	var out bytes.Buffer
	build.Stdout, build.Stderr = &out, &out
	if err := build.Run(); err != nil {
		t.Skipf("cannot build a busybox test image (is %s static?): %v\n%s", bb, err, out.String())
	}
	return image
}
