package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/berthci/berth/plugins"
	"github.com/berthci/berth/sdk"
)

// discover finds the executors: the built-ins and those in the plugin
// folders.
func discover(pluginDir string, log *slog.Logger) (map[string]plugins.Plugin, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("finding berth's own executable: %w", err)
	}
	names := make([]string, 0)
	for n := range builtins() {
		names = append(names, n)
	}
	dirs := plugins.SearchDirs(pluginDir, os.Getenv)
	return plugins.Discover(dirs, self, names, func(n string) []string { return []string{serveFlag, n} }, log), nil
}

// pluginsUsage is the help of berth plugins.
const pluginsUsage = `Usage: berth plugins COMMAND [flags] [ARGS]

  list                        the executors berth can use, with version and digest
  inspect NAME                an executor's settings, and how it was installed
  install SOURCE              install an executor plugin into the user plugin folder;
                              SOURCE is a file, an http(s) URL (with --sha256) or an OCI
                              reference REGISTRY/REPO[:VERSION|:RANGE|:latest]
  verify [NAME...]            re-hash installed plugins; fails on any changed since install
  remove NAME                 remove an installed plugin
  publish FILE... REF         push built plugins (one per os/arch) to REGISTRY/REPO:VERSION
  keygen FILE                 make an ed25519 signing key (FILE, FILE.pub)
  sign --key FILE PLUGIN      print the signature of a plugin file (for --signature)

Run 'berth plugins COMMAND --help' for a command's flags.
`

// pluginsCmd holds the flags the plugins commands share.
type pluginsCmd struct {
	stdout, stderr io.Writer
	log            *slog.Logger

	pluginDir string
	logLevel  string
	// trust
	config      string
	trustedKeys []string
	requireSig  bool
	// registry
	plainHTTP bool
}

func (c *pluginsCmd) trustFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.config, "config", "", "config.toml whose [plugins] table has trusted_keys and require_signature (default $BERTH_CONFIG, else ~/.config/berth/config.toml if it exists)")
	fs.Func("trusted-key", "also trust this public key (ed25519:BASE64, or a key file); repeatable", func(v string) error {
		c.trustedKeys = append(c.trustedKeys, v)
		return nil
	})
	fs.BoolVar(&c.requireSig, "require-signature", false, "refuse plugins not signed by a trusted key")
}

func (c *pluginsCmd) registryFlags(fs *flag.FlagSet) {
	fs.BoolVar(&c.plainHTTP, "plain-http", false, "speak plain HTTP to the registry (a registry on 127.0.0.1 or a trusted network)")
}

// trust reads the signature policy from the config and the flags.
func (c *pluginsCmd) trust() (plugins.Trust, error) {
	path, optional := c.config, false
	if path == "" {
		path, optional = plugins.DefaultConfigPath(os.Getenv), os.Getenv("BERTH_CONFIG") == ""
	}
	cfg, err := plugins.LoadConfig(path, optional)
	if err != nil {
		return plugins.Trust{}, err
	}
	return cfg.Trust(c.trustedKeys, c.requireSig)
}

// installDir is where plugins are installed: --plugin-dir, else the user
// plugin folder.
func (c *pluginsCmd) installDir() (string, error) {
	if c.pluginDir != "" {
		return c.pluginDir, nil
	}
	if d := plugins.UserDir(os.Getenv); d != "" {
		return d, nil
	}
	return "", fmt.Errorf("no user plugin folder: set $XDG_DATA_HOME or $HOME, or give --plugin-dir")
}

func pluginsCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stderr, pluginsUsage)
		if len(args) == 0 {
			return fmt.Errorf("plugins: name a command (list, inspect, install, verify, remove, publish, keygen, sign)")
		}
		return nil
	}
	c := &pluginsCmd{stdout: stdout, stderr: stderr}
	fs := flag.NewFlagSet("berth plugins "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.pluginDir, "plugin-dir", "", "look for executor plugins in this folder first (install, remove: the folder to use instead of the user plugin folder)")
	fs.StringVar(&c.logLevel, "log-level", "warn", "log level: debug, info, warn, error")
	var run func(ctx context.Context, pos []string) error
	switch args[0] {
	case "list":
		run = c.list
	case "inspect":
		run = c.inspect
	case "install":
		run = c.installFlags(fs)
	case "verify":
		c.trustFlags(fs)
		run = c.verify
	case "remove":
		run = c.remove
	case "publish":
		run = c.publishFlags(fs)
	case "keygen":
		run = c.keygen
	case "sign":
		run = c.signFlags(fs)
	default:
		fmt.Fprint(stderr, pluginsUsage)
		return fmt.Errorf("plugins: unknown command %q", args[0])
	}
	pos, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return err
	}
	if c.log, err = newLogger(stderr, c.logLevel); err != nil {
		return err
	}
	return run(ctx, pos)
}

func (c *pluginsCmd) list(ctx context.Context, pos []string) error {
	if len(pos) > 0 {
		return fmt.Errorf("plugins list takes no arguments (have %q)", pos)
	}
	found, err := discover(c.pluginDir, c.log)
	if err != nil {
		return err
	}
	return listPlugins(ctx, found, c.stdout, c.log)
}

func (c *pluginsCmd) inspect(ctx context.Context, pos []string) error {
	found, err := discover(c.pluginDir, c.log)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("plugins inspect: name one executor (have: %s)", strings.Join(plugins.Names(found), ", "))
	}
	p, ok := found[pos[0]]
	if !ok {
		return fmt.Errorf("no executor %q (have: %s)", pos[0], strings.Join(plugins.Names(found), ", "))
	}
	return inspectPlugin(ctx, p, c.stdout, c.log)
}

func (c *pluginsCmd) installFlags(fs *flag.FlagSet) func(context.Context, []string) error {
	var opts plugins.InstallOptions
	fs.StringVar(&opts.Name, "name", "", "install as berth-executor-NAME (default: the name the source gives)")
	fs.StringVar(&opts.SHA256, "sha256", "", "the sha256 the plugin file must have (hex); required for a URL")
	fs.StringVar(&opts.Signature, "signature", "", "base64 signature of a file or URL plugin (berth plugins sign)")
	fs.StringVar(&opts.Version, "version", "", "the version the plugin must be")
	fs.BoolVar(&opts.InsecureSkipVerify, "insecure-skip-verify", false, "install from a URL without --sha256")
	c.trustFlags(fs)
	c.registryFlags(fs)
	return func(ctx context.Context, pos []string) error {
		if len(pos) != 1 {
			return fmt.Errorf("plugins install: give one SOURCE (a file, an http(s) URL or REGISTRY/REPO[:VERSION]); have %d", len(pos))
		}
		opts.Source = pos[0]
		trust, err := c.trust()
		if err != nil {
			return err
		}
		dir, err := c.installDir()
		if err != nil {
			return err
		}
		in := &plugins.Installer{Dir: dir, Registry: plugins.Registry{PlainHTTP: c.plainHTTP}, Trust: trust, Log: c.log}
		m, err := in.Install(ctx, opts)
		if err != nil {
			return fmt.Errorf("plugins install: %w", err)
		}
		path := filepath.Join(dir, plugins.FilePrefix+m.Name)
		fmt.Fprintf(c.stdout, "installed executor %q %s as %s\n", m.Name, orDash(m.Version), path)
		printManifest(c.stdout, m)
		// Warn when an earlier plugin folder has one of the same name.
		if found, err := discover(c.pluginDir, c.log); err == nil {
			if p, ok := found[m.Name]; ok && p.Path != path {
				fmt.Fprintf(c.stderr, "warning: berth uses %s instead: it comes first in the plugin folders\n", p.Path)
			}
		}
		return nil
	}
}

// printManifest prints how a plugin was installed, indented.
func printManifest(w io.Writer, m plugins.Manifest) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "  source\t%s\n", m.Source)
	if m.Resolved != "" && m.Resolved != m.Source {
		fmt.Fprintf(tw, "  resolved\t%s\n", m.Resolved)
	}
	fmt.Fprintf(tw, "  sha256\t%s\n", m.SHA256)
	if m.Platform != "" {
		fmt.Fprintf(tw, "  platform\t%s\n", m.Platform)
	}
	signed := "no"
	if m.SignedBy != "" {
		signed = "by key " + m.SignedBy
	}
	fmt.Fprintf(tw, "  signed\t%s\n", signed)
	fmt.Fprintf(tw, "  installed\t%s\n", m.InstalledAt.Format(time.RFC3339))
	tw.Flush()
}

func (c *pluginsCmd) verify(ctx context.Context, pos []string) error {
	trust, err := c.trust()
	if err != nil {
		return err
	}
	checks, err := plugins.Verify(plugins.SearchDirs(c.pluginDir, os.Getenv), trust)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		var kept []plugins.Check
		for _, ch := range checks {
			if slices.Contains(pos, ch.Name) {
				kept = append(kept, ch)
			}
		}
		for _, n := range pos {
			if !slices.ContainsFunc(kept, func(ch plugins.Check) bool { return ch.Name == n }) {
				return fmt.Errorf("plugins verify: no executor plugin %q in the plugin folders", n)
			}
		}
		checks = kept
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATUS\tVERSION\tSHA256\tPATH")
	var problems []string
	installed := 0
	for _, ch := range checks {
		status := "ok"
		switch {
		case ch.Problem != "":
			status = "FAILED"
			problems = append(problems, fmt.Sprintf("%s (%s): %s", ch.Name, ch.Path, ch.Problem))
		case !ch.Installed:
			status = "unchecked (not installed by berth)"
		}
		if ch.Installed {
			installed++
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", ch.Name, status, orDash(ch.Manifest.Version), shortSHA(ch.SHA256), ch.Path)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, p := range problems {
		fmt.Fprintf(c.stdout, "\n%s\n", p)
	}
	if len(problems) > 0 {
		return fmt.Errorf("%d of %d executor plugins failed verification", len(problems), len(checks))
	}
	if installed == 0 {
		fmt.Fprintln(c.stdout, "no executor plugin installed by berth")
	}
	return nil
}

func (c *pluginsCmd) remove(ctx context.Context, pos []string) error {
	if len(pos) != 1 {
		return fmt.Errorf("plugins remove: name one executor")
	}
	dir, err := c.installDir()
	if err != nil {
		return err
	}
	m, err := (&plugins.Installer{Dir: dir, Log: c.log}).Remove(pos[0])
	if err != nil {
		if found, derr := discover(c.pluginDir, c.log); derr == nil {
			if p, ok := found[pos[0]]; ok {
				if p.Builtin {
					return fmt.Errorf("plugins remove: %w (%q is built into berth)", err, pos[0])
				}
				return fmt.Errorf("plugins remove: %w (berth finds it at %s; remove that file yourself)", err, p.Path)
			}
		}
		return fmt.Errorf("plugins remove: %w", err)
	}
	fmt.Fprintf(c.stdout, "removed executor %q %s from %s\n", pos[0], orDash(m.Version), dir)
	return nil
}

func (c *pluginsCmd) publishFlags(fs *flag.FlagSet) func(context.Context, []string) error {
	var platform, name, version, signKey string
	fs.StringVar(&platform, "platform", "", "OS/ARCH of the file (default: read from the executable's header); only with one FILE")
	fs.StringVar(&name, "name", "", "the executor's name (default: from the file name berth-executor-NAME, else the repository)")
	fs.StringVar(&version, "version", "", "the version (default: the tag, when it is a version); must agree with the plugin's own")
	fs.StringVar(&signKey, "sign-key", "", "sign each file with this ed25519 private key (berth plugins keygen)")
	c.registryFlags(fs)
	return func(ctx context.Context, pos []string) error {
		if len(pos) < 2 {
			return fmt.Errorf("plugins publish: give FILE... REF, e.g. berth plugins publish berth-executor-foo registry.example.com/team/berth-executor-foo:1.2.3")
		}
		files, refText := pos[:len(pos)-1], pos[len(pos)-1]
		ref, err := plugins.ParseReference(refText)
		if err != nil {
			return fmt.Errorf("plugins publish: %w", err)
		}
		switch {
		case ref.Digest != "":
			return fmt.Errorf("plugins publish: publish to a tag (REPO:VERSION), not a digest")
		case ref.Version == "" && version == "":
			return fmt.Errorf("plugins publish: name the version: %s:VERSION (or --version)", ref.Repo())
		case ref.Version == "":
			ref.Version = version
		case version == "" && plugins.IsExactVersion(ref.Version):
			version = ref.Version
		case version != "" && plugins.IsExactVersion(ref.Version) && !sameVersionText(ref.Version, version):
			return fmt.Errorf("plugins publish: --version %s, but the tag is %s", version, ref.Version)
		}
		if platform != "" && len(files) > 1 {
			return fmt.Errorf("plugins publish: --platform goes with one FILE; with several, each file's platform is read from its header")
		}
		if name == "" {
			name = strings.TrimPrefix(filepath.Base(files[0]), plugins.FilePrefix)
			if !strings.HasPrefix(filepath.Base(files[0]), plugins.FilePrefix) {
				name = strings.TrimPrefix(path.Base(ref.Repository), plugins.FilePrefix)
			}
		}
		pub := plugins.Publication{Ref: ref, Name: name, Version: version, Created: time.Now()}
		if signKey != "" {
			if pub.Key, err = plugins.LoadPrivateKey(signKey); err != nil {
				return fmt.Errorf("plugins publish: %w", err)
			}
		}
		for _, f := range files {
			pf := plugins.PublishFile{Path: f}
			if platform != "" {
				pf.Platform, err = plugins.ParsePlatform(platform)
			} else {
				pf.Platform, err = plugins.DetectPlatform(f)
			}
			if err != nil {
				return fmt.Errorf("plugins publish: %w", err)
			}
			if err := c.checkBeforePublish(ctx, &pub, pf); err != nil {
				return fmt.Errorf("plugins publish: %w", err)
			}
			pub.Files = append(pub.Files, pf)
		}
		a, err := plugins.Registry{PlainHTTP: c.plainHTTP}.Publish(ctx, pub, c.log)
		if err != nil {
			return fmt.Errorf("plugins publish: %w", err)
		}
		fmt.Fprintf(c.stdout, "published executor %q %s as %s\n", pub.Name, orDash(pub.Version), a.Ref)
		tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
		for _, l := range a.Manifest.Layers {
			signed := "unsigned"
			if k := l.Annotations[plugins.AnnotationSigningKey]; k != "" {
				signed = "signed by key " + k
			}
			fmt.Fprintf(tw, "  %s/%s\tsha256 %s\t%s\n", l.Annotations[plugins.AnnotationOS], l.Annotations[plugins.AnnotationArch], l.Digest.Encoded(), signed)
		}
		return tw.Flush()
	}
}

// checkBeforePublish starts a file built for this machine to check that
// it is an executor plugin and that its own version agrees with the one
// published (which it supplies when none was given). Files for other
// platforms cannot be started here.
func (c *pluginsCmd) checkBeforePublish(ctx context.Context, pub *plugins.Publication, f plugins.PublishFile) error {
	if f.Platform != plugins.HostPlatform() {
		c.log.Info("not starting a plugin built for another platform: its version is not checked", "file", f.Path, "platform", f.Platform.String())
		return nil
	}
	abs, err := filepath.Abs(f.Path)
	if err != nil {
		return err
	}
	info, err := plugins.StartProber{Log: c.log}.Probe(ctx, plugins.Plugin{Name: pub.Name, Path: abs}, "")
	if err != nil {
		return fmt.Errorf("%s is not a working berth executor plugin: %w", f.Path, err)
	}
	from := "the tag"
	if pub.Version != pub.Ref.Version {
		from = "--version"
	}
	v, err := plugins.ReconcileVersion(pub.Version, from, info.Version)
	if err != nil {
		return fmt.Errorf("%s: %w", f.Path, err)
	}
	pub.Version = v
	return nil
}

func sameVersionText(a, b string) bool {
	return strings.TrimPrefix(a, "v") == strings.TrimPrefix(b, "v")
}

func (c *pluginsCmd) keygen(ctx context.Context, pos []string) error {
	if len(pos) != 1 {
		return fmt.Errorf("plugins keygen: give the file to write the private key to (the public key goes to FILE.pub)")
	}
	pub, err := plugins.GenerateKey(pos[0])
	if err != nil {
		return fmt.Errorf("plugins keygen: %w", err)
	}
	fmt.Fprintf(c.stdout, "%s\n", plugins.FormatPublicKey(pub))
	fmt.Fprintf(c.stderr, "wrote the private key to %s (keep it secret) and the public key above, id %s, to %s.pub\n"+
		"sign with:   berth plugins publish --sign-key %s FILE REF\n"+
		"trust with:  [plugins] trusted_keys = [\"%s\"]  in config.toml, or --trusted-key %s.pub\n",
		pos[0], plugins.KeyID(pub), pos[0], pos[0], plugins.FormatPublicKey(pub), pos[0])
	return nil
}

func (c *pluginsCmd) signFlags(fs *flag.FlagSet) func(context.Context, []string) error {
	var keyPath string
	fs.StringVar(&keyPath, "key", "", "the ed25519 private key to sign with (berth plugins keygen)")
	return func(ctx context.Context, pos []string) error {
		if len(pos) != 1 || keyPath == "" {
			return fmt.Errorf("plugins sign: give --key FILE and one plugin file")
		}
		key, err := plugins.LoadPrivateKey(keyPath)
		if err != nil {
			return fmt.Errorf("plugins sign: %w", err)
		}
		sum, err := fileDigest(pos[0])
		if err != nil {
			return fmt.Errorf("plugins sign: %w", err)
		}
		fmt.Fprintln(c.stdout, plugins.Sign(key, sum))
		return nil
	}
}

// fileDigest is the hex sha256 of a file.
func fileDigest(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("reading %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// shortSHA shortens a hex digest for a table ("-" when empty).
func shortSHA(s string) string {
	if len(s) < 12 {
		return orDash(s)
	}
	return s[:12]
}

// listRow is one executor in berth plugins list.
type listRow struct {
	info     sdk.Info
	err      error
	manifest plugins.Manifest
	sha256   string
}

func listPlugins(ctx context.Context, found map[string]plugins.Plugin, stdout io.Writer, log *slog.Logger) error {
	names := plugins.Names(found)
	rows := make([]listRow, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Go(func() {
			p := found[n]
			if !p.Builtin {
				rows[i].manifest, _ = plugins.ReadManifest(p.Path)
				rows[i].sha256, _ = fileDigest(p.Path)
			}
			inst, err := plugins.Start(ctx, p, plugins.StartOptions{Log: log})
			if err != nil {
				rows[i].err = err
				return
			}
			rows[i].info = inst.Info()
			inst.Kill()
		})
	}
	wg.Wait()
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tVERSION\tPROTOCOL\tSOURCE\tPATH\tSHA256\tCAPABILITIES")
	failed := 0
	for i, n := range names {
		p, r := found[n], rows[i]
		src := "external"
		switch {
		case p.Builtin:
			src = "builtin"
		case r.manifest.SHA256 != "":
			src = "installed"
		}
		if r.err != nil {
			failed++
			fmt.Fprintf(tw, "%s\t%s\t-\t%s\t%s\t%s\tERROR: %v\n", n, orDash(r.manifest.Version), src, p.Path, shortSHA(r.sha256), r.err)
			continue
		}
		version := r.info.Version
		if r.manifest.Version != "" {
			version = r.manifest.Version
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", n, orDash(version), r.info.ProtocolVersion, src, p.Path, shortSHA(r.sha256), capabilities(r.info.Capabilities))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d executor plugins did not start", failed, len(names))
	}
	return nil
}

func capabilities(c sdk.Capabilities) string {
	var out []string
	for _, f := range []struct {
		on   bool
		name string
	}{
		{c.Image, "image"}, {c.Services, "services"}, {c.CancelGracefully, "cancel-gracefully"},
		{c.OneShot, "one-shot"}, {c.Interactive, "interactive"}, {c.Isolated, "isolated"},
	} {
		if f.on {
			out = append(out, f.name)
		}
	}
	if len(c.Shells) > 0 {
		out = append(out, "shells="+strings.Join(c.Shells, "/"))
	}
	return strings.Join(out, ",")
}

func inspectPlugin(ctx context.Context, p plugins.Plugin, stdout io.Writer, log *slog.Logger) error {
	inst, err := plugins.Start(ctx, p, plugins.StartOptions{Log: log})
	if err != nil {
		return err
	}
	defer inst.Kill()
	info := inst.Info()
	fmt.Fprintf(stdout, "%s %s (executor protocol %d) — %s\n", info.Name, info.Version, info.ProtocolVersion, p.Path)
	if info.Description != "" {
		fmt.Fprintln(stdout, info.Description)
	}
	fmt.Fprintf(stdout, "capabilities: %s\n", capabilities(info.Capabilities))
	if m, err := plugins.ReadManifest(p.Path); err == nil && !p.Builtin {
		fmt.Fprintln(stdout, "installed:")
		printManifest(stdout, m)
	}
	fmt.Fprintln(stdout)
	fields := slices.Clone(info.Config)
	if len(fields) == 0 {
		fmt.Fprintln(stdout, "This executor has no settings.")
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "SETTING\tTYPE\tDEFAULT\tREQUIRED\tSECRET\tFLAG\tDESCRIPTION\n")
	for _, f := range fields {
		def := f.Default
		if f.Secret && def != "" {
			def = "(set)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t--%s\t%s\n", f.Name, f.Type, orDash(def), yesNo(f.Required), yesNo(f.Secret), flagName(info.Name, f.Name), f.Description)
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
