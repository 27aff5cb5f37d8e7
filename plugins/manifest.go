package plugins

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/Masterminds/semver/v3"
)

// ManifestSuffix ends the name of an install manifest, kept next to the
// plugin it describes: berth-executor-foo.manifest.json.
const ManifestSuffix = ".manifest.json"

// Manifest records how a plugin was installed. `berth plugins install`
// writes it; starting the plugin, `berth plugins verify` and runner pins
// read it.
type Manifest struct {
	Name string `json:"name"`
	// Version is the plugin's own version (its Info().Version), which the
	// published version (OCI tag or --version) must agree with; the
	// published one only where the plugin reports none.
	Version string `json:"version,omitempty"`
	// Source is what was installed, as given: a path, URL or OCI reference.
	Source string `json:"source"`
	// Resolved is the OCI reference the source resolved to, pinned by the
	// artifact's manifest digest (repo:tag@sha256:…).
	Resolved string `json:"resolved,omitempty"`
	// SHA256 is the hex digest of the plugin file.
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	// Platform is the os/arch the file was installed for.
	Platform string `json:"platform,omitempty"`
	// Signature is the base64 ed25519 signature over the digest, if any;
	// SignedBy the ID of the trusted key that verified it at install.
	Signature   string    `json:"signature,omitempty"`
	SignedBy    string    `json:"signed_by,omitempty"`
	InstalledAt time.Time `json:"installed_at"`
}

// ManifestPath is where the manifest of the plugin file at pluginPath is.
func ManifestPath(pluginPath string) string { return pluginPath + ManifestSuffix }

// ReadManifest reads the install manifest of the plugin file at
// pluginPath. For a plugin berth did not install, the error wraps
// fs.ErrNotExist.
func ReadManifest(pluginPath string) (Manifest, error) {
	path := ManifestPath(pluginPath)
	data, err := os.ReadFile(path)
	if err != nil {
		return Manifest{}, fmt.Errorf("reading the install manifest of %s: %w", pluginPath, err)
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return Manifest{}, fmt.Errorf("install manifest %s is damaged: %w", path, err)
	}
	if len(m.SHA256) != 64 {
		return Manifest{}, fmt.Errorf("install manifest %s is damaged: it has no sha256", path)
	}
	return m, nil
}

// ErrChanged is returned (wrapped) for an installed plugin whose file is no
// longer the one installed.
var ErrChanged = errors.New("changed since it was installed")

// Installed returns the install manifest of p after checking that p's file
// still has the digest recorded at install. A plugin berth did not install
// gives an error wrapping fs.ErrNotExist; a changed one, ErrChanged.
func Installed(p Plugin) (Manifest, error) {
	if p.Builtin {
		return Manifest{}, fmt.Errorf("executor %q is built into berth, not installed: %w", p.Name, fs.ErrNotExist)
	}
	m, err := ReadManifest(p.Path)
	if err != nil {
		return Manifest{}, err
	}
	sum, _, err := fileSHA256(p.Path)
	if err != nil {
		return m, fmt.Errorf("executor plugin %q: %w", p.Name, err)
	}
	if sum != m.SHA256 {
		return m, fmt.Errorf("executor plugin %q (%s) %w: its sha256 is %s, but it was installed from %s with sha256 %s: reinstall it (berth plugins install %s) or remove it",
			p.Name, p.Path, ErrChanged, sum, m.Source, m.SHA256, m.Source)
	}
	return m, nil
}

// checkUnchanged is Start's check: a plugin that has an install manifest
// must still be the file installed; one without is not checked.
func checkUnchanged(p Plugin) error {
	if p.Builtin {
		return nil
	}
	if _, err := Installed(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// CheckPins checks an installed plugin against a runner's pins:
// plugin_version (a semver constraint such as "~1.2", "^1", ">=1.2 <2" or
// an exact version) and plugin_sha256 (hex). Empty pins are not checked.
// The error names what was found. Read the manifest with Installed, which
// also checks the file against it.
func CheckPins(installed Manifest, versionConstraint, sha256Hex string) error {
	name := installed.Name
	if sha256Hex != "" {
		want := strings.ToLower(strings.TrimPrefix(strings.TrimSpace(sha256Hex), "sha256:"))
		if b, err := hex.DecodeString(want); err != nil || len(b) != sha256.Size {
			return fmt.Errorf("plugin_sha256 %q for executor %q is not 64 hex digits", sha256Hex, name)
		}
		if want != installed.SHA256 {
			return fmt.Errorf("executor plugin %q installed from %s has sha256 %s, but the runner pins plugin_sha256 = %q",
				name, installed.Source, installed.SHA256, sha256Hex)
		}
	}
	if versionConstraint != "" {
		c, err := semver.NewConstraint(versionConstraint)
		if err != nil {
			return fmt.Errorf("plugin_version %q for executor %q is not a version constraint (write e.g. \"~1.2\", \"^1\" or \"1.2.3\"): %w", versionConstraint, name, err)
		}
		if installed.Version == "" {
			return fmt.Errorf("executor plugin %q installed from %s has no recorded version, but the runner pins plugin_version = %q",
				name, installed.Source, versionConstraint)
		}
		v, err := semver.NewVersion(installed.Version)
		if err != nil {
			return fmt.Errorf("executor plugin %q installed from %s has version %q, which is not a semantic version, but the runner pins plugin_version = %q",
				name, installed.Source, installed.Version, versionConstraint)
		}
		if !c.Check(v) {
			return fmt.Errorf("executor plugin %q installed from %s is version %s, which does not satisfy the runner's plugin_version = %q",
				name, installed.Source, installed.Version, versionConstraint)
		}
	}
	return nil
}

// fileSHA256 returns the hex sha256 and size of the file at path.
func fileSHA256(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, fmt.Errorf("reading plugin file: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("reading plugin file %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// sameVersion says whether two version strings name the same version
// ("v1.2.3" and "1.2.3" do).
func sameVersion(a, b string) bool {
	if a == b {
		return true
	}
	va, errA := semver.NewVersion(a)
	vb, errB := semver.NewVersion(b)
	return errA == nil && errB == nil && va.Equal(vb) && va.Metadata() == vb.Metadata()
}
