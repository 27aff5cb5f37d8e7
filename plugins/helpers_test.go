package plugins

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/shell"
)

// The test binary doubles as an external executor plugin: a small script
// (its own file, with its own digest) sets these variables and execs the
// test binary, which then serves the shell executor under that name and
// version.
const (
	envTestName    = "BERTH_TEST_EXECUTOR_NAME"
	envTestVersion = "BERTH_TEST_EXECUTOR_VERSION"
)

func init() {
	if v := os.Getenv(envTestVersion); v != "" {
		sdk.Serve(renamed{Executor: shell.New(), name: os.Getenv(envTestName), version: v})
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

// writeTestPlugin writes a plugin file named berth-executor-<name> into
// dir that serves the shell executor as name at version, and returns its
// path.
func writeTestPlugin(t *testing.T, dir, name, version string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, FilePrefix+name)
	script := "#!/bin/sh\n" + envTestName + "=" + name + " " + envTestVersion + "=" + version + " exec '" + self + "'\n"
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// listDir returns the names in dir, lock file left out.
func listDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if e.Name() != ".berth-plugins.lock" {
			names = append(names, e.Name())
		}
	}
	return names
}

// wantErr fails the test unless err is an error containing every part.
func wantErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; want one containing %q", parts)
	}
	if os.Getenv("SHOW_ERRORS") != "" {
		t.Logf("error: %v", err)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not contain %q", err, p)
		}
	}
}

func discardLog() *slog.Logger { return slog.New(slog.DiscardHandler) }
