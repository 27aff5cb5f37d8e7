package plugins

import (
	"context"
	"crypto/ed25519"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/berthci/berth/plugins/registrytest"
)

func TestParseReference(t *testing.T) {
	tests := []struct {
		in      string
		want    Reference
		wantErr string
	}{
		{"registry.example.com/team/berth-executor-foo:1.2.3", Reference{Registry: "registry.example.com", Repository: "team/berth-executor-foo", Version: "1.2.3"}, ""},
		{"127.0.0.1:5001/berth-executor-foo:~1.2", Reference{Registry: "127.0.0.1:5001", Repository: "berth-executor-foo", Version: "~1.2"}, ""},
		{"oci://reg.example/a/b", Reference{Registry: "reg.example", Repository: "a/b"}, ""},
		{"reg.example/a/b:latest", Reference{Registry: "reg.example", Repository: "a/b", Version: "latest"}, ""},
		{"reg.example/a/b:>=1.2 <2", Reference{Registry: "reg.example", Repository: "a/b", Version: ">=1.2 <2"}, ""},
		{"reg.example/a/b@sha256:" + sha64("ab"), Reference{Registry: "reg.example", Repository: "a/b", Digest: "sha256:" + sha64("ab")}, ""},
		{"reg.example/a/b:1.0.0@sha256:" + sha64("ab"), Reference{Registry: "reg.example", Repository: "a/b", Version: "1.0.0", Digest: "sha256:" + sha64("ab")}, ""},
		{"reg.example/a/b:", Reference{}, "nothing after the colon"},
		{"reg.example", Reference{}, "not an OCI reference"},
		{"reg.example/a/b@sha256:zz", Reference{}, "not a digest"},
		{"reg.example/Upper/Case:1", Reference{}, "OCI reference"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseReference(tt.in)
			if tt.wantErr != "" {
				wantErr(t, err, tt.wantErr)
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("ParseReference = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func sha64(pair string) string {
	s := ""
	for range 32 {
		s += pair
	}
	return s
}

func TestPickTag(t *testing.T) {
	tags := []string{"1.0.0", "1.2.0", "v1.2.5", "1.3.0-rc.1", "1.10.0", "2.0.0-beta", "stable", "latest"}
	tests := []struct {
		want, tag, wantErr string
	}{
		{"", "1.10.0", ""},
		{"latest", "1.10.0", ""},
		{"1.2.0", "1.2.0", ""},
		{"1.2.5", "v1.2.5", ""},
		{"v1.2.0", "1.2.0", ""},
		{"~1.2", "v1.2.5", ""},
		{"1.2", "v1.2.5", ""},
		{"^1", "1.10.0", ""},
		{"1", "1.10.0", ""},
		{">=1.2, <1.10", "v1.2.5", ""},
		{"1.3.0-rc.1", "1.3.0-rc.1", ""},
		{"stable", "stable", ""},
		{"~1.4", "", "no version matches ~1.4 (versions: 1.0.0, 1.2.0, v1.2.5, 1.3.0-rc.1, 1.10.0, 2.0.0-beta)"},
		{"3.0.0", "", "no version 3.0.0"},
		{"nightly", "", `no tag "nightly"`},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			got, err := PickTag(tt.want, tags)
			if tt.wantErr != "" {
				wantErr(t, err, tt.wantErr)
				return
			}
			if err != nil || got != tt.tag {
				t.Errorf("PickTag(%q) = %q, %v; want %q", tt.want, got, err, tt.tag)
			}
		})
	}
	if got, err := PickTag("", []string{"latest", "main"}); err != nil || got != "latest" {
		t.Errorf("with no version tags, latest is the literal tag: %q, %v", got, err)
	}
	if _, err := PickTag("", []string{"main"}); err == nil {
		t.Errorf("with no version tag and no latest tag, PickTag picked one")
	}
}

func TestDetectPlatform(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if p, err := DetectPlatform(self); err != nil || p != HostPlatform() {
		t.Errorf("DetectPlatform(the test binary) = %v, %v; want %v", p, err, HostPlatform())
	}
	script := writeTestPlugin(t, t.TempDir(), "script", "1.0.0")
	_, err = DetectPlatform(script)
	wantErr(t, err, script, "--platform")
}

// publish publishes one test plugin at version under ref (repo:version) for
// the platforms.
func publish(t *testing.T, reg Registry, repo, name, version string, key ed25519.PrivateKey, platforms ...Platform) Artifact {
	t.Helper()
	ref, err := ParseReference(repo + ":" + version)
	if err != nil {
		t.Fatal(err)
	}
	file := writeTestPlugin(t, t.TempDir(), name, version)
	pub := Publication{Ref: ref, Name: name, Version: version, Key: key, Created: time.Now()}
	for _, p := range platforms {
		pub.Files = append(pub.Files, PublishFile{Path: file, Platform: p})
	}
	a, err := reg.Publish(context.Background(), pub, discardLog())
	if err != nil {
		t.Fatalf("publishing %s: %v", ref, err)
	}
	return a
}

func TestPublishLayoutAndPlatformsKept(t *testing.T) {
	r := registrytest.Start(t)
	reg := Registry{PlainHTTP: true}
	repo := r.Host + "/team/berth-executor-multi"
	arm := Platform{OS: "linux", Arch: "arm64"}
	publish(t, reg, repo, "multi", "1.0.0", nil, arm)
	published := publish(t, reg, repo, "multi", "1.0.0", nil, HostPlatform())

	ref, _ := ParseReference(repo + ":1.0.0")
	a, err := reg.Resolve(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	if a.Ref.Digest != published.Ref.Digest || a.Name != "multi" || a.Version != "1.0.0" {
		t.Errorf("resolved %+v; want digest %s, name multi, version 1.0.0", a, published.Ref.Digest)
	}
	m := a.Manifest
	if m.ArtifactType != ArtifactType || m.Config.MediaType != "application/vnd.oci.empty.v1+json" {
		t.Errorf("artifact type %q, config %q", m.ArtifactType, m.Config.MediaType)
	}
	got := a.Platforms()
	want := []string{arm.String(), HostPlatform().String()}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("platforms after publishing one more = %v; want %v (the first one kept)", got, want)
	}
	l, err := a.Layer(HostPlatform())
	if err != nil {
		t.Fatal(err)
	}
	if l.MediaType != LayerMediaType || l.Annotations[AnnotationTitle] != "berth-executor-multi" || l.Platform == nil || l.Platform.Architecture != HostPlatform().Arch {
		t.Errorf("layer %+v", l)
	}
	_, err = a.Layer(Platform{OS: "plan9", Arch: "mips"})
	wantErr(t, err, "no build for plan9/mips", "linux/arm64")
}

func TestPublishRefusesToOverwriteAnotherExecutor(t *testing.T) {
	r := registrytest.Start(t)
	reg := Registry{PlainHTTP: true}
	repo := r.Host + "/team/shared"
	publish(t, reg, repo, "one", "1.0.0", nil, HostPlatform())
	ref, _ := ParseReference(repo + ":1.0.0")
	file := writeTestPlugin(t, t.TempDir(), "two", "1.0.0")
	_, err := reg.Publish(context.Background(), Publication{Ref: ref, Name: "two", Version: "1.0.0", Files: []PublishFile{{file, HostPlatform()}}}, discardLog())
	wantErr(t, err, `holds executor "one", not "two"`)
}
