// Package plugins finds executor plugins, starts them as go-plugin
// processes, and keeps them running for the host.
package plugins

import (
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// FilePrefix is how an external executor's file name starts:
// berth-executor-<name>.
const FilePrefix = "berth-executor-"

// Plugin is an executor plugin berth can start.
type Plugin struct {
	Name string
	// Path is the executable started; for a built-in, berth itself.
	Path string
	// Args are passed to it (a built-in's name, so berth serves it).
	Args []string
	// Builtin is true for executors compiled into berth.
	Builtin bool
}

// Env reads environment variables (os.Getenv in production).
type Env func(string) string

// SearchDirs returns the folders searched for external plugins, in order:
// flagDir (--plugin-dir), $BERTH_PLUGIN_DIR, $XDG_DATA_HOME/berth/plugins
// (default ~/.local/share/berth/plugins), /usr/local/lib/berth/plugins.
// Empty entries are dropped; relative ones are made absolute.
func SearchDirs(flagDir string, env Env) []string {
	var dirs []string
	add := func(d string) {
		// A relative folder (--plugin-dir .) is made absolute: a plugin's
		// path without a slash would be looked up in $PATH.
		if d != "" && !filepath.IsAbs(d) {
			if abs, err := filepath.Abs(d); err == nil {
				d = abs
			}
		}
		if d != "" && !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	add(flagDir)
	add(env("BERTH_PLUGIN_DIR"))
	add(UserDir(env))
	add("/usr/local/lib/berth/plugins")
	return dirs
}

// UserDir is the user's plugin folder: $XDG_DATA_HOME/berth/plugins, or
// ~/.local/share/berth/plugins.
func UserDir(env Env) string {
	if x := env("XDG_DATA_HOME"); x != "" {
		return filepath.Join(x, "berth", "plugins")
	}
	if h := env("HOME"); h != "" {
		return filepath.Join(h, ".local", "share", "berth", "plugins")
	}
	return ""
}

// Discover returns the executors available: the built-ins (served by
// re-executing self with the arguments builtinArgs(name)) and the
// external plugins found in dirs. The first folder that has a plugin wins,
// and an external plugin overrides a built-in of the same name. Files that
// are not executables named berth-executor-<name> are skipped with a debug
// log line.
func Discover(dirs []string, self string, builtins []string, builtinArgs func(string) []string, log *slog.Logger) map[string]Plugin {
	found := make(map[string]Plugin)
	for _, name := range builtins {
		found[name] = Plugin{Name: name, Path: self, Args: builtinArgs(name), Builtin: true}
	}
	external := make(map[string]bool)
	for _, dir := range dirs {
		entries, err := os.ReadDir(dir)
		if err != nil {
			if !os.IsNotExist(err) {
				log.Warn("cannot read plugin folder", "dir", dir, "error", err)
			}
			continue
		}
		for _, e := range entries {
			if strings.HasSuffix(e.Name(), ManifestSuffix) {
				continue // an install manifest, next to its plugin
			}
			p, why := candidate(dir, e)
			if why != "" {
				log.Debug("not an executor plugin: "+why, "path", filepath.Join(dir, e.Name()))
				continue
			}
			if external[p.Name] {
				log.Debug("executor plugin shadowed by an earlier folder", "path", p.Path, "name", p.Name)
				continue
			}
			if prev, ok := found[p.Name]; ok && prev.Builtin {
				log.Debug("external executor plugin overrides the built-in", "name", p.Name, "path", p.Path)
			}
			external[p.Name] = true
			found[p.Name] = p
		}
	}
	return found
}

// candidate says whether a folder entry is an executor plugin, and if not why.
func candidate(dir string, e fs.DirEntry) (Plugin, string) {
	name, ok := strings.CutPrefix(e.Name(), FilePrefix)
	if !ok {
		return Plugin{}, "name does not start with " + FilePrefix
	}
	if name == "" || strings.ContainsAny(name, ". ") {
		return Plugin{}, "no executor name after " + FilePrefix + " (or it has a dot or space)"
	}
	path := filepath.Join(dir, e.Name())
	info, err := os.Stat(path) // follows symlinks: a linked plugin is fine
	if err != nil {
		return Plugin{}, fmt.Sprintf("cannot stat: %v", err)
	}
	if !info.Mode().IsRegular() {
		return Plugin{}, "not a regular file"
	}
	if info.Mode().Perm()&0o111 == 0 {
		return Plugin{}, "not executable"
	}
	return Plugin{Name: name, Path: path}, ""
}

// Names returns the plugins' names, sorted.
func Names(ps map[string]Plugin) []string {
	names := make([]string, 0, len(ps))
	for n := range ps {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}
