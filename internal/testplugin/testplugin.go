// Package testplugin is test support shared by berth's packages: it
// builds the berth binary for tests that run it as users do, and lets a
// test binary double as an external executor plugin — the real shell
// executor, served under another name and version.
package testplugin

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/shell"
)

// The variables with which a plugin script asks the test binary to serve.
const (
	envName    = "BERTH_TEST_EXECUTOR_NAME"
	envVersion = "BERTH_TEST_EXECUTOR_VERSION"
)

// ServeIfAsked serves the shell executor, renamed, and exits when the
// process was started by a script from Write. Call it first in TestMain
// (or an init of the test package).
func ServeIfAsked() {
	if v := os.Getenv(envVersion); v != "" {
		sdk.Serve(renamed{Executor: shell.New(), name: os.Getenv(envName), version: v})
		os.Exit(0)
	}
}

// renamed is the shell executor under another name and version.
type renamed struct {
	sdk.Executor
	name, version string
}

func (r renamed) Info(ctx context.Context) (sdk.Info, error) {
	i, err := r.Executor.Info(ctx)
	i.Name, i.Version = r.name, r.version
	return i, err
}

// Write writes berth-executor-<name> into dir: a script (a file of its
// own, with its own digest) that runs the test binary as the shell
// executor named name at version. It returns the file's path.
func Write(t testing.TB, dir, name, version string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "berth-executor-"+name)
	script := "#!/bin/sh\n" + envName + "=" + name + " " + envVersion + "=" + version + " exec '" + self + "'\n"
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// BuildBerth builds the berth command (pkg is the path of cmd/berth
// relative to the test's package) into dir and returns the binary's path.
func BuildBerth(dir, pkg string) (string, error) {
	bin := filepath.Join(dir, "berth")
	build := exec.Command("go", "build", "-o", bin, pkg)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	return bin, build.Run()
}
