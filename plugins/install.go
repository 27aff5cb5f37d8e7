package plugins

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/berthci/berth/sdk"
)

// MaxPluginSize bounds the size of a plugin file berth installs.
const MaxPluginSize = 1 << 30

// Prober starts a plugin file to learn what it is; Install refuses a file
// that does not start as an executor plugin.
type Prober interface {
	Probe(ctx context.Context, p Plugin, sha256Hex string) (sdk.Info, error)
}

// StartProber probes a plugin by starting it with Start (pinned to the
// digest just verified) and stopping it.
type StartProber struct{ Log *slog.Logger }

// Probe implements Prober.
func (s StartProber) Probe(ctx context.Context, p Plugin, sha256Hex string) (sdk.Info, error) {
	inst, err := Start(ctx, p, StartOptions{SHA256: sha256Hex, Log: s.Log})
	if err != nil {
		return sdk.Info{}, err
	}
	defer inst.Kill()
	return inst.Info(), nil
}

// Installer installs plugins into one folder, usually UserDir.
type Installer struct {
	Dir      string
	Registry Registry
	// HTTP downloads URL sources (http.DefaultClient when nil).
	HTTP *http.Client
	// Trust is the signature policy.
	Trust Trust
	// Platform is the build to pick from a registry (HostPlatform when
	// zero).
	Platform Platform
	// Probe starts the new file before it becomes visible (StartProber
	// when nil).
	Probe Prober
	Log   *slog.Logger
	// Now stamps manifests (time.Now when nil).
	Now func() time.Time
}

// InstallOptions say what to install and how to check it.
type InstallOptions struct {
	// Source is a file path, an http(s) URL or an OCI reference.
	Source string
	// Name is the executor's name; by default it comes from the source.
	Name string
	// SHA256 is the hex digest the plugin file must have. Required for a
	// URL unless InsecureSkipVerify.
	SHA256 string
	// Signature is the base64 signature of a file or URL source (a
	// registry's come from the artifact).
	Signature string
	// Version is the version the plugin is expected to be; it must agree
	// with the source's and the plugin's own.
	Version            string
	InsecureSkipVerify bool
}

// fetched is what a source gave, in the temporary file.
type fetched struct {
	sha256      string
	size        int64
	name        string // the name the source suggests
	version     string // the version the source claims
	versionFrom string
	signature   string
	resolved    string
}

// Install fetches the plugin to a temporary file in the folder, checks its
// digest and signature, starts it once to check that it is an executor
// plugin of the protocol berth speaks (and of the version claimed), and
// only then renames it to berth-executor-<name>, next to its manifest.
// On any error nothing new is left in the folder and an installed plugin
// of the same name is untouched.
func (in *Installer) Install(ctx context.Context, opts InstallOptions) (Manifest, error) {
	log := in.Log
	if log == nil {
		log = slog.Default()
	}
	kind, err := classify(opts.Source)
	if err != nil {
		return Manifest{}, err
	}
	wantSHA := ""
	if opts.SHA256 != "" {
		if wantSHA, err = normalizeSHA256(opts.SHA256); err != nil {
			return Manifest{}, err
		}
	}
	if kind == urlSource && wantSHA == "" && !opts.InsecureSkipVerify {
		return Manifest{}, fmt.Errorf("installing from %s: give the plugin's digest with --sha256 (or, if you must, --insecure-skip-verify)", opts.Source)
	}
	if kind == ociSource && opts.Signature != "" {
		return Manifest{}, fmt.Errorf("installing from %s: the signature of a plugin in a registry comes from the registry; --signature is for files and URLs", opts.Source)
	}
	if opts.Name != "" {
		if err := checkName(opts.Name); err != nil {
			return Manifest{}, err
		}
	}
	if err := os.MkdirAll(in.Dir, 0o755); err != nil {
		return Manifest{}, fmt.Errorf("making the plugin folder: %w", err)
	}
	unlock, err := lockDir(in.Dir)
	if err != nil {
		return Manifest{}, err
	}
	defer unlock()

	tmp, err := os.CreateTemp(in.Dir, ".berth-executor-partial-*")
	if err != nil {
		return Manifest{}, fmt.Errorf("installing into %s: %w", in.Dir, err)
	}
	committed := false
	defer func() {
		tmp.Close()
		if !committed {
			os.Remove(tmp.Name())
		}
	}()

	var f fetched
	switch kind {
	case fileSource:
		f, err = in.fromFile(opts.Source, tmp)
	case urlSource:
		f, err = in.fromURL(ctx, opts.Source, tmp)
	case ociSource:
		f, err = in.fromRegistry(ctx, opts.Source, tmp)
	}
	if err != nil {
		return Manifest{}, err
	}
	if kind != ociSource {
		f.signature = opts.Signature
	}
	name := opts.Name
	if name == "" {
		name = f.name
		if err := checkName(name); err != nil {
			return Manifest{}, fmt.Errorf("cannot tell the executor's name from %s: give it with --name", opts.Source)
		}
	}
	if wantSHA != "" && wantSHA != f.sha256 {
		return Manifest{}, fmt.Errorf("%s has sha256 %s, not the %s given with --sha256: refusing to install it", opts.Source, f.sha256, wantSHA)
	}
	if kind == urlSource && wantSHA == "" {
		log.Warn("installing a plugin downloaded without checking its digest (--insecure-skip-verify)", "url", opts.Source, "sha256", f.sha256)
	}
	signedBy, err := in.Trust.Check(f.sha256, f.signature)
	if err != nil {
		return Manifest{}, fmt.Errorf("%s: %w", opts.Source, err)
	}
	if f.signature != "" && signedBy == "" {
		log.Warn("the plugin is signed, but no key is trusted to check the signature: installing it as unsigned", "source", opts.Source)
		f.signature = ""
	}
	claimed, claimedFrom := f.version, f.versionFrom
	if opts.Version != "" {
		if claimed != "" && !sameVersion(claimed, opts.Version) {
			return Manifest{}, fmt.Errorf("%s: --version %s, but %s says %s", opts.Source, opts.Version, claimedFrom, claimed)
		}
		claimed, claimedFrom = opts.Version, "--version"
	}

	if err := tmp.Chmod(0o755); err != nil {
		return Manifest{}, fmt.Errorf("installing into %s: %w", in.Dir, err)
	}
	if err := tmp.Sync(); err != nil {
		return Manifest{}, fmt.Errorf("installing into %s: %w", in.Dir, err)
	}
	if err := tmp.Close(); err != nil {
		return Manifest{}, fmt.Errorf("installing into %s: %w", in.Dir, err)
	}
	probe := in.Probe
	if probe == nil {
		probe = StartProber{Log: log}
	}
	info, err := probe.Probe(ctx, Plugin{Name: name, Path: tmp.Name()}, f.sha256)
	if err != nil {
		return Manifest{}, fmt.Errorf("%s is not a working berth executor plugin: %w", opts.Source, err)
	}
	version, err := ReconcileVersion(claimed, claimedFrom, info.Version)
	if err != nil {
		return Manifest{}, fmt.Errorf("%s: %w", opts.Source, err)
	}
	now := time.Now
	if in.Now != nil {
		now = in.Now
	}
	m := Manifest{
		Name: name, Version: version, Source: opts.Source, Resolved: f.resolved,
		SHA256: f.sha256, Size: f.size, Platform: in.platform().String(),
		Signature: f.signature, SignedBy: signedBy, InstalledAt: now().UTC().Truncate(time.Second),
	}
	if kind != ociSource {
		m.Platform = ""
		if p, err := DetectPlatform(tmp.Name()); err == nil {
			m.Platform = p.String()
		}
	}
	dest := filepath.Join(in.Dir, FilePrefix+name)
	if err := commit(tmp.Name(), dest, m); err != nil {
		return Manifest{}, err
	}
	committed = true
	return m, nil
}

// commit makes the plugin visible: its manifest is written aside first,
// then the plugin and the manifest are renamed into place.
func commit(tmpPlugin, dest string, m Manifest) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding the install manifest: %w", err)
	}
	dir := filepath.Dir(dest)
	mtmp, err := os.CreateTemp(dir, ".berth-manifest-partial-*")
	if err != nil {
		return fmt.Errorf("writing the install manifest: %w", err)
	}
	defer os.Remove(mtmp.Name())
	_, err = mtmp.Write(append(data, '\n'))
	if err == nil {
		err = mtmp.Sync()
	}
	if cerr := mtmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing the install manifest: %w", err)
	}
	if err := os.Rename(tmpPlugin, dest); err != nil {
		return fmt.Errorf("installing %s: %w", dest, err)
	}
	if err := os.Rename(mtmp.Name(), ManifestPath(dest)); err != nil {
		os.Remove(dest) // a plugin without its manifest must not stay
		return fmt.Errorf("installing %s: %w", ManifestPath(dest), err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

func (in *Installer) platform() Platform {
	if in.Platform == (Platform{}) {
		return HostPlatform()
	}
	return in.Platform
}

type sourceKind int

const (
	fileSource sourceKind = iota
	urlSource
	ociSource
)

// classify tells a file, a URL and an OCI reference apart: a URL has its
// scheme, an existing path is a file, and so is anything starting with
// ".", "/" or "~" or without a "/"; the rest is an OCI reference.
func classify(source string) (sourceKind, error) {
	switch {
	case source == "":
		return 0, errors.New("say what to install: a file, an http(s) URL or an OCI reference")
	case strings.HasPrefix(source, "https://"), strings.HasPrefix(source, "http://"):
		return urlSource, nil
	case strings.HasPrefix(source, "oci://"):
		return ociSource, nil
	}
	if _, err := os.Stat(source); err == nil {
		return fileSource, nil
	}
	if strings.HasPrefix(source, ".") || strings.HasPrefix(source, "/") || strings.HasPrefix(source, "~") || !strings.Contains(source, "/") {
		return 0, fmt.Errorf("no plugin file %s (to install from a registry, write REGISTRY/REPOSITORY:VERSION)", source)
	}
	return ociSource, nil
}

func (in *Installer) fromFile(src string, tmp *os.File) (fetched, error) {
	r, err := os.Open(src)
	if err != nil {
		return fetched{}, fmt.Errorf("reading plugin file: %w", err)
	}
	defer r.Close()
	fi, err := r.Stat()
	if err != nil {
		return fetched{}, fmt.Errorf("reading plugin file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fetched{}, fmt.Errorf("plugin file %s is not a regular file", src)
	}
	sum, n, err := copyLimited(tmp, r, MaxPluginSize)
	if err != nil {
		return fetched{}, fmt.Errorf("copying plugin file %s: %w", src, err)
	}
	return fetched{sha256: sum, size: n, name: strings.TrimPrefix(filepath.Base(src), FilePrefix)}, nil
}

func (in *Installer) fromURL(ctx context.Context, src string, tmp *os.File) (fetched, error) {
	u, err := url.Parse(src)
	if err != nil {
		return fetched{}, fmt.Errorf("URL %q: %w", src, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, src, nil)
	if err != nil {
		return fetched{}, fmt.Errorf("URL %q: %w", src, err)
	}
	client := in.HTTP
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return fetched{}, fmt.Errorf("downloading %s: %w", src, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fetched{}, fmt.Errorf("downloading %s: the server answered %s", src, resp.Status)
	}
	sum, n, err := copyLimited(tmp, resp.Body, MaxPluginSize)
	if err != nil {
		return fetched{}, fmt.Errorf("downloading %s: %w", src, err)
	}
	return fetched{sha256: sum, size: n, name: strings.TrimPrefix(path.Base(u.Path), FilePrefix)}, nil
}

func (in *Installer) fromRegistry(ctx context.Context, src string, tmp *os.File) (fetched, error) {
	ref, err := ParseReference(src)
	if err != nil {
		return fetched{}, err
	}
	a, err := in.Registry.Resolve(ctx, ref)
	if err != nil {
		return fetched{}, err
	}
	layer, err := a.Layer(in.platform())
	if err != nil {
		return fetched{}, err
	}
	if layer.Digest.Algorithm() != digest.SHA256 || layer.Digest.Validate() != nil {
		return fetched{}, fmt.Errorf("%s: the %s layer's digest %q is not a sha256 digest", a.Ref, in.platform(), layer.Digest)
	}
	if layer.Size > MaxPluginSize {
		return fetched{}, fmt.Errorf("%s: the %s layer has %d bytes, more than the %d a plugin may have", a.Ref, in.platform(), layer.Size, MaxPluginSize)
	}
	rc, err := in.Registry.FetchLayer(ctx, a, layer)
	if err != nil {
		return fetched{}, err
	}
	defer rc.Close()
	sum, n, err := copyLimited(tmp, rc, layer.Size)
	if err != nil {
		return fetched{}, fmt.Errorf("downloading the %s build from %s: %w", in.platform(), a.Ref, err)
	}
	if n != layer.Size || sum != layer.Digest.Encoded() {
		return fetched{}, fmt.Errorf("downloading the %s build from %s: got %d bytes with sha256 %s, but the layer is %d bytes with %s: refusing it",
			in.platform(), a.Ref, n, sum, layer.Size, layer.Digest)
	}
	name := a.Name
	if name == "" {
		name = strings.TrimPrefix(layer.Annotations[AnnotationTitle], FilePrefix)
	}
	if name == "" {
		name = strings.TrimPrefix(path.Base(ref.Repository), FilePrefix)
	}
	return fetched{
		sha256: sum, size: n, name: name, version: a.Version,
		versionFrom: "the registry (" + a.Ref.Repo() + ":" + a.Ref.Version + ")",
		signature:   layer.Annotations[AnnotationSignature], resolved: a.Ref.String(),
	}, nil
}

// copyLimited copies at most limit bytes (more is an error) and returns
// their hex sha256.
func copyLimited(dst io.Writer, src io.Reader, limit int64) (string, int64, error) {
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(dst, h), io.LimitReader(src, limit+1))
	if err != nil {
		return "", n, err
	}
	if n > limit {
		return "", n, fmt.Errorf("more than %d bytes", limit)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// ReconcileVersion reconciles the version a source claims (an OCI tag or
// annotation, --version; claimedFrom says which, for the error) with the
// one the plugin reports in its Info: the plugin's own wins, and where both
// exist they must agree ("v1.2.3" and "1.2.3" do). Where the plugin reports
// none, the claimed version is the version.
func ReconcileVersion(claimed, claimedFrom, reported string) (string, error) {
	switch {
	case reported == "":
		return claimed, nil
	case claimed == "" || sameVersion(claimed, reported):
		return reported, nil
	}
	return "", fmt.Errorf("%s says version %s, but the plugin says it is version %s: refusing it (publish it under its own version)", claimedFrom, claimed, reported)
}

func normalizeSHA256(s string) (string, error) {
	h := strings.ToLower(strings.TrimPrefix(strings.TrimSpace(s), "sha256:"))
	if b, err := hex.DecodeString(h); err != nil || len(b) != sha256.Size {
		return "", fmt.Errorf("--sha256 %q is not 64 hex digits", s)
	}
	return h, nil
}

// checkName checks an executor name as Discover would find it.
func checkName(name string) error {
	if name == "" || strings.ContainsAny(name, "./ \\") {
		return fmt.Errorf("executor name %q: use letters, digits, '-' or '_' (no dot, slash or space)", name)
	}
	return nil
}

// lockDir serializes installs and removals in a folder.
func lockDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, ".berth-plugins.lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("locking the plugin folder %s: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking the plugin folder %s: %w", dir, err)
	}
	return func() { f.Close() }, nil
}

// Remove deletes an installed plugin and its manifest from the folder and
// returns the manifest it had (zero for a plugin put there by hand).
func (in *Installer) Remove(name string) (Manifest, error) {
	if err := checkName(name); err != nil {
		return Manifest{}, err
	}
	dest := filepath.Join(in.Dir, FilePrefix+name)
	_, errPlugin := os.Lstat(dest)
	_, errManifest := os.Lstat(ManifestPath(dest))
	if errors.Is(errPlugin, fs.ErrNotExist) && errors.Is(errManifest, fs.ErrNotExist) {
		return Manifest{}, fmt.Errorf("executor plugin %q is not installed in %s", name, in.Dir)
	}
	unlock, err := lockDir(in.Dir)
	if err != nil {
		return Manifest{}, err
	}
	defer unlock()
	m, _ := ReadManifest(dest)
	if err := os.Remove(dest); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return m, fmt.Errorf("removing executor plugin %q: %w", name, err)
	}
	if err := os.Remove(ManifestPath(dest)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return m, fmt.Errorf("removing the install manifest of %q: %w", name, err)
	}
	return m, nil
}
