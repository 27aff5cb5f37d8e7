package plugins

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Check is what Verify found about one plugin file.
type Check struct {
	Name string
	Path string
	// Installed is true when berth installed the plugin (it has a
	// manifest); plugins put in a folder by hand are listed unchecked.
	Installed bool
	Manifest  Manifest
	// SHA256 is the file's digest now ("" when it is missing).
	SHA256 string
	// Problem says what is wrong; "" when nothing is.
	Problem string
}

// Verify re-hashes every installed plugin in dirs and compares it with its
// manifest; it re-checks signatures under trust as Install would. Plugins
// without a manifest are listed with Installed false.
func Verify(dirs []string, trust Trust) ([]Check, error) {
	var checks []Check
	for _, dir := range dirs {
		entries, err := os.ReadDir(dir)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return checks, fmt.Errorf("reading plugin folder %s: %w", dir, err)
		}
		for _, e := range entries {
			base := e.Name()
			if !strings.HasPrefix(base, FilePrefix) {
				continue
			}
			if plugin, ok := strings.CutSuffix(base, ManifestSuffix); ok {
				checks = append(checks, verifyInstalled(filepath.Join(dir, plugin), trust))
				continue
			}
			path := filepath.Join(dir, base)
			if _, err := os.Stat(ManifestPath(path)); err == nil {
				continue // checked through its manifest
			}
			p, why := candidate(dir, e)
			if why != "" {
				continue
			}
			sum, _, err := fileSHA256(path)
			c := Check{Name: p.Name, Path: path, SHA256: sum}
			if err != nil {
				c.Problem = err.Error()
			}
			checks = append(checks, c)
		}
	}
	slices.SortStableFunc(checks, func(a, b Check) int { return strings.Compare(a.Name, b.Name) })
	return checks, nil
}

func verifyInstalled(path string, trust Trust) Check {
	c := Check{Name: strings.TrimPrefix(filepath.Base(path), FilePrefix), Path: path, Installed: true}
	m, err := ReadManifest(path)
	if err != nil {
		c.Problem = err.Error()
		return c
	}
	c.Manifest = m
	sum, _, err := fileSHA256(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		c.Problem = "the plugin file is missing, its install manifest is left: reinstall it or remove it"
		return c
	case err != nil:
		c.Problem = err.Error()
		return c
	}
	c.SHA256 = sum
	if sum != m.SHA256 {
		c.Problem = fmt.Sprintf("%s: its sha256 is %s, but it was installed with %s (from %s)", ErrChanged, sum, m.SHA256, m.Source)
		return c
	}
	if _, err := trust.Check(m.SHA256, m.Signature); err != nil {
		c.Problem = err.Error()
	}
	return c
}
