package plugins

import (
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/berthci/berth/internal/testplugin"
)

func init() { testplugin.ServeIfAsked() }

// writeTestPlugin writes a plugin file named berth-executor-<name> into
// dir that serves the shell executor as name at version.
func writeTestPlugin(t *testing.T, dir, name, version string) string {
	return testplugin.Write(t, dir, name, version)
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
