package docker

import (
	"archive/tar"
	"bytes"
	"encoding/base64"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/pkg/authconfig"

	"github.com/berthci/berth/sdk"
)

func TestDecodeSettings(t *testing.T) {
	tests := []struct {
		name    string
		raw     map[string]any
		wantErr []string
		check   func(t *testing.T, s settings)
	}{
		{name: "defaults", raw: map[string]any{}, check: func(t *testing.T, s settings) {
			if !slices.Equal(s.PullPolicy, []string{PullAlways}) || s.WaitForServicesTimeout != 30*time.Second || s.BuildsDir != "/builds" || s.RunnerName == "" {
				t.Errorf("defaults are %+v", s)
			}
		}},
		{name: "full", raw: map[string]any{
			"image": "alpine:3", "privileged": true, "user": "1000:1000", "cpus": "1.5", "memory": "512m", "memory_swap": "1g",
			"shm_size": "64m", "volumes": []any{"/cache", "named:/data:ro", "/srv:/srv"}, "extra_hosts": "db.local:10.0.0.2",
			"dns": []string{"1.1.1.1", "2606:4700::1111"}, "network_mode": "host", "cap_add": "NET_ADMIN", "cap_drop": "MKNOD",
			"devices": []string{"/dev/fuse", "/dev/kvm:/dev/kvm:rw"}, "security_opt": "no-new-privileges",
			"pull_policy": "if-not-present,never", "allowed_images": "alpine:*,registry.example/**", "allowed_pull_policies": "if-not-present",
			"wait_for_services_timeout": "1m", "host": "tcp://127.0.0.1:2376", "builds_dir": "/work/", "runner_name": "r1",
		}, check: func(t *testing.T, s settings) {
			if s.CPUs != 1.5 || s.Memory != 512<<20 || s.memorySwap != 1<<30 || s.ShmSize != 64<<20 || len(s.dns) != 2 || s.BuildsDir != "/work" {
				t.Errorf("parsed %+v", s)
			}
			if len(s.mounts) != 3 || s.mounts[0].bind() != "" || s.mounts[1].bind() != "named:/data:ro" || s.mounts[2].bind() != "/srv:/srv" {
				t.Errorf("volumes parsed as %+v", s.mounts)
			}
			if len(s.devices) != 2 || s.devices[0].PathInContainer != "/dev/fuse" || s.devices[1].CgroupPermissions != "rw" {
				t.Errorf("devices parsed as %+v", s.devices)
			}
		}},
		{name: "unlimited_swap", raw: map[string]any{"memory": "1g", "memory_swap": "-1"}, check: func(t *testing.T, s settings) {
			if s.memorySwap != -1 {
				t.Errorf("memory_swap -1 parsed as %d", s.memorySwap)
			}
		}},
		{name: "unknown", raw: map[string]any{"helper_image": "x"}, wantErr: []string{"helper_image"}},
		{name: "bad_pull_policy", raw: map[string]any{"pull_policy": "sometimes"}, wantErr: []string{"pull_policy", "sometimes"}},
		{name: "bad_allowed_pull_policy", raw: map[string]any{"allowed_pull_policies": []string{"always", "often"}}, wantErr: []string{"allowed_pull_policies", "often"}},
		{name: "bad_memory", raw: map[string]any{"memory": "lots"}, wantErr: []string{"memory"}},
		{name: "swap_below_memory", raw: map[string]any{"memory": "1g", "memory_swap": "512m"}, wantErr: []string{"memory_swap", "must not be below"}},
		{name: "swap_without_memory", raw: map[string]any{"memory_swap": "512m"}, wantErr: []string{"memory_swap", "needs \"memory\""}},
		{name: "negative_cpus", raw: map[string]any{"cpus": -1}, wantErr: []string{"cpus"}},
		{name: "bad_dns", raw: map[string]any{"dns": "dns.example"}, wantErr: []string{"dns", "dns.example"}},
		{name: "bad_extra_host", raw: map[string]any{"extra_hosts": "nocolon"}, wantErr: []string{"extra_hosts", "nocolon"}},
		{name: "bad_volume", raw: map[string]any{"volumes": "relative/path"}, wantErr: []string{"volumes", "relative/path"}},
		{name: "bad_device", raw: map[string]any{"devices": "/dev/x:/dev/y:rwx"}, wantErr: []string{"devices", "rwx"}},
		{name: "relative_builds_dir", raw: map[string]any{"builds_dir": "builds"}, wantErr: []string{"builds_dir"}},
		{name: "bad_host", raw: map[string]any{"host": "nonsense://x"}, wantErr: []string{"host", "nonsense://x"}},
		{name: "bad_auth_config", raw: map[string]any{"auth_config": "{not json"}, wantErr: []string{"auth_config"}},
		{name: "cred_helpers", raw: map[string]any{"auth_config": `{"credsStore": "desktop"}`}, wantErr: []string{"credential helpers"}},
		{name: "bad_timeout", raw: map[string]any{"wait_for_services_timeout": "soon"}, wantErr: []string{"wait_for_services_timeout"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := decodeSettings(tt.raw, func(string) string { return "" })
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				tt.check(t, s)
				return
			}
			if err == nil {
				t.Fatalf("settings %v were accepted; want an error", tt.raw)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("the error does not say %q: %v", w, err)
				}
			}
		})
	}
}

func TestServiceAliases(t *testing.T) {
	tests := []struct {
		image string
		want  []string
	}{
		{"postgres", []string{"postgres"}},
		{"postgres:16", []string{"postgres"}},
		{"tutum/wordpress:latest", []string{"tutum__wordpress", "tutum-wordpress"}},
		{"registry.example.com:5000/group/redis:7@sha256:abc", []string{"registry.example.com__group__redis", "registry.example.com-group-redis"}},
		{"127.0.0.1:5000/berth-test/httpd:v1", []string{"127.0.0.1__berth-test__httpd", "127.0.0.1-berth-test-httpd"}},
	}
	for _, tt := range tests {
		if got := serviceAliases(tt.image); !slices.Equal(got, tt.want) {
			t.Errorf("serviceAliases(%q) = %q, want %q", tt.image, got, tt.want)
		}
	}
}

func TestPullPolicyChoice(t *testing.T) {
	cfg := func(policy, allowed []string) settings {
		s := defaultSettings()
		s.PullPolicy, s.AllowedPullPolicies = policy, allowed
		return s
	}
	tests := []struct {
		name      string
		requested []string
		cfg       settings
		want      []string
		wantErr   string
	}{
		{"runner's", nil, cfg([]string{PullIfNotPresent}, nil), []string{PullIfNotPresent}, ""},
		{"job's within pull_policy", []string{PullAlways}, cfg([]string{PullAlways, PullIfNotPresent}, nil), []string{PullAlways}, ""},
		{"job's refused by pull_policy", []string{PullNever}, cfg([]string{PullAlways}, nil), nil, "its pull_policy: always"},
		{"job's within allowed", []string{PullNever, PullAlways}, cfg([]string{PullAlways}, []string{PullNever}), []string{PullNever}, ""},
		{"job's refused by allowed", []string{PullAlways}, cfg([]string{PullAlways}, []string{PullNever}), nil, "its allowed_pull_policies: never"},
		{"job's unknown", []string{"daily"}, cfg([]string{PullAlways}, nil), nil, `"daily" is not a pull policy`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := pullPolicies("img", tt.requested, tt.cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("got %v, %v; want an error saying %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Errorf("got %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func TestCheckAllowed(t *testing.T) {
	tests := []struct {
		image    string
		patterns []string
		ok       bool
	}{
		{"anything", nil, true},
		{"ruby:3.3", []string{"ruby:*"}, true},
		{"ruby:3.3", []string{"python:*"}, false},
		{"library/ruby:3.3", []string{"ruby:*"}, true}, // the familiar name matches
		{"registry.example/team/app:1", []string{"registry.example/*"}, false},
		{"registry.example/team/app:1", []string{"registry.example/**"}, true},
		{"registry.example/team/app:1", []string{"registry.example/team/app:?"}, true},
		{"docker.io/library/alpine:3", []string{"docker.io/library/*"}, true},
	}
	for _, tt := range tests {
		err := checkAllowed(tt.image, tt.patterns)
		if (err == nil) != tt.ok {
			t.Errorf("checkAllowed(%q, %q) = %v; want allowed %v", tt.image, tt.patterns, err, tt.ok)
		}
	}
}

func TestRegistryAuth(t *testing.T) {
	auth := func(user, pass string) string { return base64.StdEncoding.EncodeToString([]byte(user + ":" + pass)) }
	config := func(key, user, pass string) string {
		return `{"auths": {"` + key + `": {"auth": "` + auth(user, pass) + `"}}}`
	}
	tests := []struct {
		name      string
		image     string
		job       sdk.Job
		runner    string
		wantUser  string
		wantEmpty bool
	}{
		{name: "anonymous", image: "alpine", wantEmpty: true},
		{name: "job credentials", image: "reg.example:5000/a/b",
			job:      sdk.Job{Credentials: []sdk.Credential{{Registry: "reg.example:5000", Username: "job", Password: "p"}}},
			runner:   config("reg.example:5000", "runner", "p"),
			wantUser: "job"},
		{name: "job variable over runner", image: "reg.example/a",
			job:      sdk.Job{ExecutorVariables: map[string]string{"DOCKER_AUTH_CONFIG": config("https://reg.example", "var", "p")}},
			runner:   config("reg.example", "runner", "p"),
			wantUser: "var"},
		{name: "runner", image: "reg.example/a", runner: config("reg.example", "runner", "p"), wantUser: "runner"},
		{name: "docker hub key", image: "someone/private", runner: config("https://index.docker.io/v1/", "hub", "p"), wantUser: "hub"},
		{name: "other registry", image: "reg.example/a", runner: config("other.example", "runner", "p"), wantEmpty: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := defaultSettings()
			cfg.AuthConfig = tt.runner
			got, err := registryAuth(tt.image, tt.job, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if tt.wantEmpty {
				if got != "" {
					t.Errorf("got credentials %q; want none", got)
				}
				return
			}
			a, err := authconfig.Decode(got)
			if err != nil {
				t.Fatal(err)
			}
			if a.Username != tt.wantUser || a.Password != "p" {
				t.Errorf("got user %q password %q; want %q, %q", a.Username, a.Password, tt.wantUser, "p")
			}
		})
	}
}

func TestResourceName(t *testing.T) {
	for _, id := range []string{"job-1", "a b", "a/b", strings.Repeat("x", 100), "..", "ünïcode"} {
		n := resourceName(id)
		if !strings.HasPrefix(n, "berth-") || len(n) > 80 || strings.Trim(n, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_") != "" {
			t.Errorf("resourceName(%q) = %q, not a valid short resource name", id, n)
		}
	}
	if resourceName("a b") == resourceName("a_b") {
		t.Errorf("job IDs %q and %q share a resource name", "a b", "a_b")
	}
}

func TestRewriteUpload(t *testing.T) {
	entry := func(name string, typ byte, link string) []byte {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: typ, Linkname: link, Mode: 0o4755, Uid: 1000}); err != nil {
			t.Fatal(err)
		}
		tw.Close()
		return buf.Bytes()
	}
	tests := []struct {
		name    string
		archive []byte
		prefix  string
		want    string
		wantErr string
	}{
		{"file", entry("a/b.txt", tar.TypeReg, ""), "in", "in/a/b.txt", ""},
		{"top", entry("./x", tar.TypeReg, ""), ".", "x", ""},
		{"hard link", entry("l", tar.TypeLink, "a/b"), "in", "in/l -> in/a/b", ""},
		{"escape", entry("../x", tar.TypeReg, ""), "in", "", "leads outside"},
		{"absolute", entry("/etc/passwd", tar.TypeReg, ""), ".", "", "absolute"},
		{"link escape", entry("l", tar.TypeLink, "../../etc/passwd"), ".", "", "leads outside"},
		{"device", entry("dev", tar.TypeChar, ""), ".", "", "special file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			err := rewriteUpload(bytes.NewReader(tt.archive), &out, tt.prefix)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("got %v; want an error saying %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tr := tar.NewReader(&out)
			var names []string
			for {
				hdr, err := tr.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if hdr.Uid != 0 || hdr.Mode&^0o777 != 0 {
					t.Errorf("entry %s keeps owner %d or mode %o", hdr.Name, hdr.Uid, hdr.Mode)
				}
				n := hdr.Name
				if hdr.Linkname != "" {
					n += " -> " + hdr.Linkname
				}
				names = append(names, n)
			}
			if !slices.Contains(names, tt.want) {
				t.Errorf("the rewritten archive holds %q; want %q among them", names, tt.want)
			}
		})
	}
}
