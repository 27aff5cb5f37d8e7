package plugins

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestSearchDirs(t *testing.T) {
	tests := []struct {
		name    string
		flagDir string
		env     map[string]string
		want    []string
	}{
		{
			name: "defaults from HOME",
			env:  map[string]string{"HOME": "/home/u"},
			want: []string{"/home/u/.local/share/berth/plugins", "/usr/local/lib/berth/plugins"},
		},
		{
			name:    "flag, env and XDG in order",
			flagDir: "/flag",
			env:     map[string]string{"BERTH_PLUGIN_DIR": "/env", "XDG_DATA_HOME": "/xdg", "HOME": "/home/u"},
			want:    []string{"/flag", "/env", "/xdg/berth/plugins", "/usr/local/lib/berth/plugins"},
		},
		{
			name:    "duplicates once",
			flagDir: "/usr/local/lib/berth/plugins",
			want:    []string{"/usr/local/lib/berth/plugins"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := SearchDirs(tt.flagDir, func(k string) string { return tt.env[k] })
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("SearchDirs = %v, want %v", got, tt.want)
			}
		})
	}
}

func writeFile(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"), mode); err != nil {
		t.Fatal(err)
	}
}

func TestDiscover(t *testing.T) {
	first, second := t.TempDir(), t.TempDir()
	writeFile(t, filepath.Join(first, "berth-executor-shell"), 0o755)     // overrides the built-in
	writeFile(t, filepath.Join(first, "berth-executor-foo"), 0o755)       // external
	writeFile(t, filepath.Join(second, "berth-executor-foo"), 0o755)      // shadowed by the first folder
	writeFile(t, filepath.Join(second, "berth-executor-bar"), 0o644)      // not executable
	writeFile(t, filepath.Join(second, "README"), 0o755)                  // wrong name
	writeFile(t, filepath.Join(second, "berth-executor-x.sha256"), 0o755) // has a dot
	if err := os.Mkdir(filepath.Join(second, "berth-executor-dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	got := Discover([]string{first, second, filepath.Join(first, "missing")}, "/bin/berth",
		[]string{"shell", "docker"}, func(n string) []string { return []string{"serve", n} }, log)

	want := map[string]Plugin{
		"shell":  {Name: "shell", Path: filepath.Join(first, "berth-executor-shell")},
		"foo":    {Name: "foo", Path: filepath.Join(first, "berth-executor-foo")},
		"docker": {Name: "docker", Path: "/bin/berth", Args: []string{"serve", "docker"}, Builtin: true},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Discover =\n%v\nwant\n%v", got, want)
	}
}
