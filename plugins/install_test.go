package plugins

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berthci/berth/plugins/registrytest"
)

func TestInstallFromFile(t *testing.T) {
	src := writeTestPlugin(t, t.TempDir(), "local", "0.3.0")
	sum, size, err := fileSHA256(src)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "plugins") // made by Install
	stamp := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	in := &Installer{Dir: dir, Now: func() time.Time { return stamp }, Log: discardLog()}
	m, err := in.Install(context.Background(), InstallOptions{Source: src, SHA256: "sha256:" + strings.ToUpper(sum)})
	if err != nil {
		t.Fatal(err)
	}
	want := Manifest{Name: "local", Version: "0.3.0", Source: src, SHA256: sum, Size: size, InstalledAt: stamp}
	if m != want {
		t.Errorf("manifest = %+v\nwant       %+v", m, want)
	}
	if got := listDir(t, dir); !slices.Equal(got, []string{"berth-executor-local", "berth-executor-local.manifest.json"}) {
		t.Errorf("plugin folder holds %v", got)
	}
	onDisk, err := ReadManifest(filepath.Join(dir, "berth-executor-local"))
	if err != nil || onDisk != want {
		t.Errorf("manifest on disk = %+v, %v", onDisk, err)
	}
	// Under another name, and with the version it claims.
	m, err = in.Install(context.Background(), InstallOptions{Source: src, Name: "other", Version: "v0.3.0"})
	if err != nil || m.Name != "other" || m.Version != "0.3.0" {
		t.Errorf("install --name other --version v0.3.0: %+v, %v", m, err)
	}
}

func TestInstallFromURL(t *testing.T) {
	src := writeTestPlugin(t, t.TempDir(), "web", "2.0.0")
	body, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	sum, _, _ := fileSHA256(src)
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		switch r.URL.Path {
		case "/dl/berth-executor-web":
			w.Write(body)
		case "/dl/truncated/berth-executor-web":
			w.Header().Set("Content-Length", "100000")
			w.Write(body)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	url := srv.URL + "/dl/berth-executor-web"

	t.Run("refused without a digest", func(t *testing.T) {
		dir := t.TempDir()
		before := hits.Load()
		_, err := (&Installer{Dir: dir, Log: discardLog()}).Install(context.Background(), InstallOptions{Source: url})
		wantErr(t, err, url, "--sha256", "--insecure-skip-verify")
		if hits.Load() != before {
			t.Errorf("the plugin was downloaded before the missing digest was refused")
		}
	})
	t.Run("with its digest", func(t *testing.T) {
		dir := t.TempDir()
		m, err := (&Installer{Dir: dir, Log: discardLog()}).Install(context.Background(), InstallOptions{Source: url, SHA256: sum})
		if err != nil || m.Name != "web" || m.Version != "2.0.0" || m.SHA256 != sum || m.Source != url {
			t.Errorf("install: %+v, %v", m, err)
		}
	})
	t.Run("insecure", func(t *testing.T) {
		dir := t.TempDir()
		m, err := (&Installer{Dir: dir, Log: discardLog()}).Install(context.Background(), InstallOptions{Source: url, InsecureSkipVerify: true})
		if err != nil || m.SHA256 != sum {
			t.Errorf("install --insecure-skip-verify: %+v, %v", m, err)
		}
	})
	failures := []struct {
		name string
		opts InstallOptions
		want []string
	}{
		{"wrong digest", InstallOptions{Source: url, SHA256: sha64("00")}, []string{"has sha256 " + sum, "not the " + sha64("00")}},
		{"not found", InstallOptions{Source: srv.URL + "/dl/nope", SHA256: sum, Name: "web"}, []string{"404"}},
		{"cut short", InstallOptions{Source: srv.URL + "/dl/truncated/berth-executor-web", SHA256: sum}, []string{"downloading", "unexpected EOF"}},
		{"server gone", InstallOptions{Source: "http://127.0.0.1:1/berth-executor-web", SHA256: sum}, []string{"connection refused"}},
	}
	for _, tt := range failures {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			_, err := (&Installer{Dir: dir, Log: discardLog()}).Install(context.Background(), tt.opts)
			wantErr(t, err, tt.want...)
			if got := listDir(t, dir); len(got) != 0 {
				t.Errorf("a failed install left %v", got)
			}
		})
	}
}

func TestInstallFromRegistryByVersion(t *testing.T) {
	r := registrytest.Start(t)
	reg := Registry{PlainHTTP: true}
	repo := r.Host + "/team/berth-executor-ranged"
	for _, v := range []string{"1.2.0", "1.2.5", "1.3.0", "2.0.0-rc.1"} {
		publish(t, reg, repo, "ranged", v, nil, HostPlatform())
	}
	tests := []struct {
		ask, want string
	}{
		{":1.2.0", "1.2.0"},
		{":~1.2", "1.2.5"},
		{":^1", "1.3.0"},
		{":latest", "1.3.0"},
		{"", "1.3.0"},
		{":2.0.0-rc.1", "2.0.0-rc.1"},
	}
	dir := t.TempDir()
	in := &Installer{Dir: dir, Registry: reg, Log: discardLog()}
	for _, tt := range tests {
		t.Run(tt.ask, func(t *testing.T) {
			m, err := in.Install(context.Background(), InstallOptions{Source: repo + tt.ask})
			if err != nil {
				t.Fatal(err)
			}
			if m.Version != tt.want || m.Name != "ranged" || m.Platform != HostPlatform().String() {
				t.Errorf("installed %+v; want ranged %s", m, tt.want)
			}
			if !strings.HasPrefix(m.Resolved, repo+":"+tt.want+"@sha256:") {
				t.Errorf("resolved %q; want %s:%s@sha256:…", m.Resolved, repo, tt.want)
			}
			p := Discover([]string{dir}, "", nil, nil, discardLog())["ranged"]
			inst, err := Start(context.Background(), p, StartOptions{Log: discardLog()})
			if err != nil {
				t.Fatal(err)
			}
			defer inst.Kill()
			if v := inst.Info().Version; v != tt.want {
				t.Errorf("the installed plugin says version %s; want %s", v, tt.want)
			}
		})
	}
}

func TestInstallSigned(t *testing.T) {
	r := registrytest.Start(t)
	reg := Registry{PlainHTTP: true}
	signer, trusted := newKey(t)
	repo := r.Host + "/team/berth-executor-signed"
	publish(t, reg, repo, "signed", "1.0.0", signer, HostPlatform())
	m, err := (&Installer{Dir: t.TempDir(), Registry: reg, Trust: Trust{Keys: []TrustedKey{trusted}, Require: true}, Log: discardLog()}).
		Install(context.Background(), InstallOptions{Source: repo + ":1.0.0"})
	if err != nil || m.SignedBy != trusted.ID || m.Signature == "" {
		t.Errorf("signed install: %+v, %v; want signed by %s", m, err, trusted.ID)
	}
	// A file with a detached signature.
	file := writeTestPlugin(t, t.TempDir(), "detached", "1.0.0")
	sum, _, _ := fileSHA256(file)
	m, err = (&Installer{Dir: t.TempDir(), Trust: Trust{Keys: []TrustedKey{trusted}, Require: true}, Log: discardLog()}).
		Install(context.Background(), InstallOptions{Source: file, Signature: Sign(signer, sum)})
	if err != nil || m.SignedBy != trusted.ID {
		t.Errorf("install with --signature: %+v, %v", m, err)
	}
}

// TestFailedInstallsLeaveNothing: each refusal is a clear error, leaves
// no file behind, and keeps the version installed before.
func TestFailedInstallsLeaveNothing(t *testing.T) {
	r := registrytest.Start(t)
	reg := Registry{PlainHTTP: true}
	signer, trusted := newKey(t)
	stranger, _ := newKey(t)
	repo := r.Host + "/team/berth-executor-victim"
	publish(t, reg, repo, "victim", "1.0.0", signer, HostPlatform())
	publish(t, reg, repo, "victim", "1.1.0", stranger, HostPlatform())
	publish(t, reg, repo, "victim", "1.2.0", nil, HostPlatform())
	publish(t, reg, repo, "victim", "1.3.0", nil, Platform{OS: "linux", Arch: "s390x"})
	// 1.4.0 claims a version the plugin does not have.
	ref, _ := ParseReference(repo + ":1.4.0")
	liar := writeTestPlugin(t, t.TempDir(), "victim", "1.0.0")
	if _, err := reg.Publish(context.Background(), Publication{Ref: ref, Name: "victim", Version: "1.4.0", Files: []PublishFile{{liar, HostPlatform()}}}, discardLog()); err != nil {
		t.Fatal(err)
	}
	// 1.5.0 is not a plugin at all.
	junk := filepath.Join(t.TempDir(), "berth-executor-victim")
	os.WriteFile(junk, []byte("#!/bin/sh\necho 'I am no plugin' >&2\nexit 3\n"), 0o755)
	ref, _ = ParseReference(repo + ":1.5.0")
	if _, err := reg.Publish(context.Background(), Publication{Ref: ref, Name: "victim", Version: "1.5.0", Files: []PublishFile{{junk, HostPlatform()}}}, discardLog()); err != nil {
		t.Fatal(err)
	}
	down := registrytest.Start(t)
	downRepo := down.Host + "/team/berth-executor-victim"
	publish(t, reg, downRepo, "victim", "1.0.0", nil, HostPlatform())
	down.Stop()

	trust := Trust{Keys: []TrustedKey{trusted}}
	tests := []struct {
		name  string
		opts  InstallOptions
		trust Trust
		want  []string
	}{
		{"wrong --sha256", InstallOptions{Source: repo + ":1.2.0", SHA256: sha64("00")}, trust, []string{repo + ":1.2.0", "not the " + sha64("00")}},
		{"bad signature", InstallOptions{Source: repo + ":1.1.0"}, trust, []string{"bad signature", trusted.ID}},
		{"unsigned, signatures required", InstallOptions{Source: repo + ":1.2.0"}, Trust{Keys: trust.Keys, Require: true}, []string{"not signed", "required"}},
		{"no layer for this platform", InstallOptions{Source: repo + ":1.3.0"}, trust, []string{"no build for " + HostPlatform().String(), "linux/s390x"}},
		{"version mismatch", InstallOptions{Source: repo + ":1.4.0"}, trust, []string{"says version 1.4.0", "plugin says it is version 1.0.0"}},
		{"--version mismatch", InstallOptions{Source: repo + ":1.2.0", Version: "1.2.1"}, trust, []string{"--version 1.2.1", "1.2.0"}},
		{"not a plugin", InstallOptions{Source: repo + ":1.5.0"}, trust, []string{"not a working berth executor plugin", "exited with status 3"}},
		{"no such version", InstallOptions{Source: repo + ":~3"}, trust, []string{"no version matches ~3", "1.0.0, 1.1.0"}},
		{"no such repository", InstallOptions{Source: r.Host + "/team/nothing:1.0.0"}, trust, []string{"has no repository team/nothing"}},
		{"registry down", InstallOptions{Source: downRepo + ":1.0.0"}, trust, []string{"cannot reach the registry " + down.Host, "connection refused"}},
		{"plain registry without --plain-http", InstallOptions{Source: repo + ":1.2.0"}, trust, []string{"--plain-http"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			in := &Installer{Dir: dir, Registry: reg, Trust: trust, Log: discardLog()}
			before, err := in.Install(context.Background(), InstallOptions{Source: repo + ":1.0.0"})
			if err != nil {
				t.Fatal(err)
			}
			in.Trust = tt.trust
			if tt.name == "plain registry without --plain-http" {
				in.Registry = Registry{}
			}
			_, err = in.Install(context.Background(), tt.opts)
			wantErr(t, err, tt.want...)
			if got := listDir(t, dir); !slices.Equal(got, []string{"berth-executor-victim", "berth-executor-victim.manifest.json"}) {
				t.Errorf("after the failed install the folder holds %v", got)
			}
			after, err := Installed(Plugin{Name: "victim", Path: filepath.Join(dir, "berth-executor-victim")})
			if err != nil || after != before {
				t.Errorf("the installed version changed: %+v, %v; was %+v", after, err, before)
			}
		})
	}
}

func TestInstallRefusals(t *testing.T) {
	src := writeTestPlugin(t, t.TempDir(), "x", "1.0.0")
	tests := []struct {
		name string
		opts InstallOptions
		want string
	}{
		{"nothing", InstallOptions{}, "say what to install"},
		{"missing file", InstallOptions{Source: "./berth-executor-none"}, "no plugin file ./berth-executor-none"},
		{"bad name", InstallOptions{Source: src, Name: "a.b"}, `executor name "a.b"`},
		{"bad digest", InstallOptions{Source: src, SHA256: "xyz"}, "not 64 hex digits"},
		{"signature flag for a registry", InstallOptions{Source: "reg.example/a/b:1.0.0", Signature: "abc"}, "comes from the registry"},
		{"bad reference", InstallOptions{Source: "reg.example/a/b:"}, "nothing after the colon"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			_, err := (&Installer{Dir: dir, Log: discardLog()}).Install(context.Background(), tt.opts)
			wantErr(t, err, tt.want)
			if got := listDir(t, dir); len(got) != 0 {
				t.Errorf("a refused install left %v", got)
			}
		})
	}
}

func TestVerifyAndRemove(t *testing.T) {
	dir, other := t.TempDir(), t.TempDir()
	signer, trusted := newKey(t)
	in := &Installer{Dir: dir, Log: discardLog()}
	install := func(name string, signed bool) Manifest {
		src := writeTestPlugin(t, t.TempDir(), name, "1.0.0")
		opts := InstallOptions{Source: src}
		if signed {
			sum, _, _ := fileSHA256(src)
			opts.Signature = Sign(signer, sum)
			in.Trust = Trust{Keys: []TrustedKey{trusted}}
		}
		m, err := in.Install(context.Background(), opts)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	install("good", true)
	install("tampered", false)
	install("gone", false)
	writeTestPlugin(t, other, "byhand", "1.0.0")
	f, _ := os.OpenFile(filepath.Join(dir, "berth-executor-tampered"), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("echo evil\n")
	f.Close()
	os.Remove(filepath.Join(dir, "berth-executor-gone"))

	tests := []struct {
		name  string
		trust Trust
		want  map[string]string // name → part of the problem ("" for none)
	}{
		{"no policy", Trust{}, map[string]string{"good": "", "tampered": "changed since it was installed", "gone": "missing", "byhand": ""}},
		{"signatures required", Trust{Keys: []TrustedKey{trusted}, Require: true}, map[string]string{"good": "", "tampered": "changed", "gone": "missing", "byhand": ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checks, err := Verify([]string{dir, other}, tt.trust)
			if err != nil {
				t.Fatal(err)
			}
			if len(checks) != len(tt.want) {
				t.Errorf("Verify found %d plugins: %+v", len(checks), checks)
			}
			for _, c := range checks {
				want, ok := tt.want[c.Name]
				switch {
				case !ok:
					t.Errorf("unexpected %+v", c)
				case want == "" && c.Problem != "":
					t.Errorf("%s: problem %q; want none", c.Name, c.Problem)
				case want != "" && !strings.Contains(c.Problem, want):
					t.Errorf("%s: problem %q; want one with %q", c.Name, c.Problem, want)
				}
				if c.Installed != (c.Name != "byhand") {
					t.Errorf("%s: Installed = %v", c.Name, c.Installed)
				}
			}
		})
	}
	// An unsigned plugin fails once signatures are required.
	install("unsigned", false)
	checks, _ := Verify([]string{dir}, Trust{Keys: []TrustedKey{trusted}, Require: true})
	for _, c := range checks {
		if c.Name == "unsigned" && !strings.Contains(c.Problem, "not signed") {
			t.Errorf("unsigned plugin under a required signature: %q", c.Problem)
		}
	}

	for _, name := range []string{"good", "tampered", "gone", "unsigned"} {
		if _, err := in.Remove(name); err != nil {
			t.Errorf("Remove(%s): %v", name, err)
		}
	}
	if got := listDir(t, dir); len(got) != 0 {
		t.Errorf("after removing all, the folder holds %v", got)
	}
	_, err := in.Remove("good")
	wantErr(t, err, `"good" is not installed in `+dir)
}
