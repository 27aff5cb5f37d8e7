package plugins

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckPins(t *testing.T) {
	sum := strings.Repeat("ab", 32)
	m := Manifest{Name: "foo", Version: "1.2.5", Source: "reg/team/foo:~1.2", SHA256: sum}
	tests := []struct {
		name       string
		m          Manifest
		constraint string
		sha        string
		wantErr    []string
	}{
		{"no pins", m, "", "", nil},
		{"tilde range", m, "~1.2", "", nil},
		{"caret range", m, "^1", "", nil},
		{"exact", m, "1.2.5", "", nil},
		{"digest", m, "", sum, nil},
		{"digest with prefix, upper case", m, "", "sha256:" + strings.ToUpper(sum), nil},
		{"both", m, ">=1.2, <2", sum, nil},
		{"version outside the range", m, "~1.3", "", []string{`"foo"`, "version 1.2.5", `plugin_version = "~1.3"`, "reg/team/foo:~1.2"}},
		{"other digest", m, "", strings.Repeat("cd", 32), []string{"sha256 " + sum, "plugin_sha256"}},
		{"bad digest pin", m, "", "abc", []string{"not 64 hex digits"}},
		{"bad constraint", m, "~>1.x.y", "", []string{"not a version constraint"}},
		{"no recorded version", Manifest{Name: "foo", SHA256: sum, Source: "./foo"}, "~1.2", "", []string{"no recorded version"}},
		{"version not semver", Manifest{Name: "foo", Version: "nightly", SHA256: sum}, "~1.2", "", []string{`"nightly"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckPins(tt.m, tt.constraint, tt.sha)
			if tt.wantErr == nil {
				if err != nil {
					t.Errorf("CheckPins: %v", err)
				}
				return
			}
			wantErr(t, err, tt.wantErr...)
		})
	}
}

func TestChangedPluginIsRefusedAtStart(t *testing.T) {
	src := writeTestPlugin(t, t.TempDir(), "pinned", "1.0.0")
	dir := t.TempDir()
	in := &Installer{Dir: dir}
	m, err := in.Install(context.Background(), InstallOptions{Source: src})
	if err != nil {
		t.Fatal(err)
	}
	p := Discover([]string{dir}, "", nil, nil, discardLog())["pinned"]
	if got, err := Installed(p); err != nil || got.SHA256 != m.SHA256 {
		t.Fatalf("Installed = %+v, %v", got, err)
	}
	inst, err := Start(context.Background(), p, StartOptions{Log: discardLog()})
	if err != nil {
		t.Fatalf("the untouched plugin does not start: %v", err)
	}
	inst.Kill()

	// Append to the installed file, as a tampering (or a botched copy) would.
	f, err := os.OpenFile(p.Path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("# changed\n")
	f.Close()
	_, err = Installed(p)
	if !errors.Is(err, ErrChanged) {
		t.Errorf("Installed of a changed plugin: %v; want ErrChanged", err)
	}
	_, err = Start(context.Background(), p, StartOptions{Log: discardLog()})
	wantErr(t, err, `"pinned"`, p.Path, "changed since it was installed", m.SHA256)

	// A plugin put there by hand has no manifest and is not checked.
	hand := writeTestPlugin(t, t.TempDir(), "hand", "1.0.0")
	if _, err := Installed(Plugin{Name: "hand", Path: hand}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Installed of a plugin put by hand: %v; want fs.ErrNotExist", err)
	}
	if err := checkUnchanged(Plugin{Name: "hand", Path: hand}); err != nil {
		t.Errorf("a plugin without manifest is refused: %v", err)
	}
}

func TestDiscoverSkipsManifests(t *testing.T) {
	dir := t.TempDir()
	writeTestPlugin(t, dir, "foo", "1.0.0")
	os.WriteFile(filepath.Join(dir, FilePrefix+"foo"+ManifestSuffix), []byte("{}"), 0o755)
	found := Discover([]string{dir}, "", nil, nil, discardLog())
	if len(found) != 1 || found["foo"].Path == "" {
		t.Errorf("Discover = %v; want only foo", found)
	}
}

// A relative plugin folder must give absolute plugin paths: a path
// without a slash would be looked up in $PATH when the plugin starts.
func TestSearchDirsMakesRelativeAbsolute(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	writeTestPlugin(t, dir, "rel", "1.0.0")
	dirs := SearchDirs(".", func(string) string { return "" })
	if len(dirs) == 0 || dirs[0] != dir {
		t.Fatalf("SearchDirs(\".\") = %v; want %s first", dirs, dir)
	}
	p := Discover(dirs, "", nil, nil, discardLog())["rel"]
	inst, err := Start(context.Background(), p, StartOptions{Log: discardLog()})
	if err != nil {
		t.Fatalf("a plugin found through a relative folder does not start: %v", err)
	}
	inst.Kill()
}
