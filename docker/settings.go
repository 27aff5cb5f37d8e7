package docker

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/berthci/berth/sdk"
)

// The pull policies, as GitLab names them.
const (
	PullAlways       = "always"
	PullIfNotPresent = "if-not-present"
	PullNever        = "never"
)

// settings are the executor's settings ([runners.docker] in config.toml).
type settings struct {
	Host                   string        `mapstructure:"host" help:"Docker engine to use (unix:///var/run/docker.sock, tcp://HOST:2376); empty: DOCKER_HOST, else the default socket"`
	Image                  string        `mapstructure:"image" help:"image for jobs that name none"`
	PullPolicy             []string      `mapstructure:"pull_policy" help:"pull policies tried in order: always, if-not-present, never (a job's own pull_policy replaces them)"`
	AllowedImages          []string      `mapstructure:"allowed_images" help:"image names jobs and services may use, as globs (* within a path segment, ** across); empty: any"`
	AllowedPullPolicies    []string      `mapstructure:"allowed_pull_policies" help:"pull policies a job may ask for; empty: those of pull_policy"`
	Privileged             bool          `mapstructure:"privileged" help:"run job and service containers privileged"`
	User                   string        `mapstructure:"user" help:"user (NAME, UID or UID:GID) steps run as; empty: the image's"`
	CPUs                   float64       `mapstructure:"cpus" help:"CPUs a job container may use (1.5 = one and a half); 0: no limit"`
	Memory                 sdk.Size      `mapstructure:"memory" help:"memory limit of a job container (e.g. 512m); 0: no limit"`
	MemorySwap             string        `mapstructure:"memory_swap" help:"memory plus swap limit (e.g. 1g, -1 for unlimited swap); empty: the engine's default (twice memory)"`
	ShmSize                sdk.Size      `mapstructure:"shm_size" help:"size of /dev/shm (e.g. 256m); 0: the engine's default"`
	Volumes                []string      `mapstructure:"volumes" help:"extra mounts: /path (a volume removed with the job), NAME:/path or /host/path:/path, each with an optional :ro"`
	ExtraHosts             []string      `mapstructure:"extra_hosts" help:"extra /etc/hosts entries, HOST:IP"`
	DNS                    []string      `mapstructure:"dns" help:"DNS servers (IP addresses) for job and service containers"`
	NetworkMode            string        `mapstructure:"network_mode" help:"network for job and service containers (bridge, host, none, a network's name); empty: a network per job with services, else the default bridge"`
	CapAdd                 []string      `mapstructure:"cap_add" help:"Linux capabilities to add (e.g. NET_ADMIN)"`
	CapDrop                []string      `mapstructure:"cap_drop" help:"Linux capabilities to drop"`
	Devices                []string      `mapstructure:"devices" help:"host devices to give the job container: /dev/HOST[:/dev/CONTAINER[:rwm]]"`
	SecurityOpt            []string      `mapstructure:"security_opt" help:"security options (e.g. seccomp=unconfined, no-new-privileges)"`
	WaitForServicesTimeout time.Duration `mapstructure:"wait_for_services_timeout" help:"how long to wait for each service's exposed TCP ports before the script; 0: do not wait"`
	AuthConfig             string        `mapstructure:"auth_config" secret:"true" help:"registry logins as DOCKER_AUTH_CONFIG JSON ({\"auths\": {\"REGISTRY\": {\"auth\": \"base64(user:password)\"}}}); empty: the DOCKER_AUTH_CONFIG environment variable"`
	BuildsDir              string        `mapstructure:"builds_dir" help:"where the build volume is mounted in the job container; a job's build directory is a directory below it"`
	RunnerName             string        `mapstructure:"runner_name" help:"value of the berth.runner label; a plugin removes leftovers of this runner's jobs past their expiry when it starts"`

	// Parsed forms, filled in by decodeSettings.
	memorySwap int64
	dns        []netip.Addr
	mounts     []volumeSpec
	devices    []container.DeviceMapping
}

func defaultSettings() settings {
	name, err := os.Hostname()
	if err != nil || name == "" {
		name = "berth"
	}
	return settings{
		PullPolicy:             []string{PullAlways},
		WaitForServicesTimeout: 30 * time.Second,
		BuildsDir:              "/builds",
		RunnerName:             name,
	}
}

// decodeSettings decodes and checks raw settings; getenv supplies
// DOCKER_AUTH_CONFIG when auth_config is not set.
func decodeSettings(raw map[string]any, getenv func(string) string) (settings, error) {
	cfg := defaultSettings()
	if err := sdk.DecodeConfig(raw, &cfg); err != nil {
		return cfg, err
	}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if cfg.Host != "" {
		u, err := client.ParseHostURL(cfg.Host)
		switch {
		case err != nil:
			bad("setting \"host\": %q is not an engine address (unix:///path or tcp://HOST:PORT): %w", cfg.Host, err)
		case !slices.Contains([]string{"unix", "tcp", "http", "https", "npipe"}, u.Scheme):
			bad("setting \"host\": %q is not an engine address (unix:///path or tcp://HOST:PORT)", cfg.Host)
		}
	}
	if len(cfg.PullPolicy) == 0 {
		cfg.PullPolicy = []string{PullAlways}
	}
	for _, k := range []struct {
		name string
		list []string
	}{{"pull_policy", cfg.PullPolicy}, {"allowed_pull_policies", cfg.AllowedPullPolicies}} {
		for _, p := range k.list {
			if !validPullPolicy(p) {
				bad("setting %q: %q is not a pull policy (always, if-not-present, never)", k.name, p)
			}
		}
	}
	for _, p := range cfg.AllowedImages {
		if _, err := globRegexp(p); err != nil {
			bad("setting \"allowed_images\": %w", err)
		}
	}
	if cfg.CPUs < 0 {
		bad("setting \"cpus\" must not be negative, got %v", cfg.CPUs)
	}
	switch s := strings.TrimSpace(cfg.MemorySwap); s {
	case "", "0":
	case "-1":
		cfg.memorySwap = -1
	default:
		n, err := sdk.ParseSize(s)
		switch {
		case err != nil:
			bad("setting \"memory_swap\": %w", err)
		case cfg.Memory == 0:
			bad("setting \"memory_swap\" needs \"memory\" to be set too")
		case int64(n) < int64(cfg.Memory):
			bad("setting \"memory_swap\" (%s) must not be below \"memory\" (%s): it is memory plus swap", sdk.Size(n), cfg.Memory)
		default:
			cfg.memorySwap = int64(n)
		}
	}
	for _, d := range cfg.DNS {
		a, err := netip.ParseAddr(strings.TrimSpace(d))
		if err != nil {
			bad("setting \"dns\": %q is not an IP address", d)
			continue
		}
		cfg.dns = append(cfg.dns, a)
	}
	for _, h := range cfg.ExtraHosts {
		name, ip, ok := strings.Cut(h, ":")
		if !ok || name == "" || ip == "" {
			bad("setting \"extra_hosts\": %q is not HOST:IP", h)
		}
	}
	for _, v := range cfg.Volumes {
		m, err := parseVolume(v)
		if err != nil {
			bad("setting \"volumes\": %w", err)
			continue
		}
		cfg.mounts = append(cfg.mounts, m)
	}
	for _, d := range cfg.Devices {
		m, err := parseDevice(d)
		if err != nil {
			bad("setting \"devices\": %w", err)
			continue
		}
		cfg.devices = append(cfg.devices, m)
	}
	if cfg.WaitForServicesTimeout < 0 {
		cfg.WaitForServicesTimeout = 0
	}
	if cfg.BuildsDir == "" {
		cfg.BuildsDir = "/builds"
	}
	if !path.IsAbs(cfg.BuildsDir) || path.Clean(cfg.BuildsDir) == "/" {
		bad("setting \"builds_dir\" must be an absolute path below /, got %q", cfg.BuildsDir)
	}
	cfg.BuildsDir = path.Clean(cfg.BuildsDir)
	if strings.TrimSpace(cfg.RunnerName) == "" {
		bad("setting \"runner_name\" must not be empty")
	}
	if cfg.AuthConfig == "" && getenv != nil {
		cfg.AuthConfig = getenv("DOCKER_AUTH_CONFIG")
	}
	if cfg.AuthConfig != "" {
		if _, err := parseAuthConfig(cfg.AuthConfig); err != nil {
			bad("setting \"auth_config\" (or DOCKER_AUTH_CONFIG): %w", err)
		}
	}
	return cfg, errors.Join(errs...)
}

func validPullPolicy(p string) bool {
	return slices.Contains([]string{PullAlways, PullIfNotPresent, PullNever}, p)
}

// volumeSpec is one entry of the volumes setting.
type volumeSpec struct {
	// source is empty for an anonymous volume, a name for a named volume,
	// an absolute host path for a bind mount.
	source, target string
	readOnly       bool
}

func parseVolume(v string) (volumeSpec, error) {
	parts := strings.Split(v, ":")
	var m volumeSpec
	if n := len(parts); n > 1 && (parts[n-1] == "ro" || parts[n-1] == "rw") {
		m.readOnly = parts[n-1] == "ro"
		parts = parts[:n-1]
	}
	switch len(parts) {
	case 1:
		m.target = parts[0]
	case 2:
		m.source, m.target = parts[0], parts[1]
	default:
		return m, fmt.Errorf("%q is not /path, NAME:/path or /host/path:/path (with an optional :ro)", v)
	}
	if !path.IsAbs(m.target) {
		return m, fmt.Errorf("%q: the path in the container, %q, must be absolute", v, m.target)
	}
	if len(parts) == 2 && m.source == "" {
		return m, fmt.Errorf("%q: the volume name or host path before the colon is empty", v)
	}
	return m, nil
}

// bind is the volume as a bind of HostConfig.Binds ("" for an anonymous
// volume, which goes into Config.Volumes).
func (m volumeSpec) bind() string {
	if m.source == "" {
		return ""
	}
	b := m.source + ":" + m.target
	if m.readOnly {
		b += ":ro"
	}
	return b
}

func parseDevice(d string) (container.DeviceMapping, error) {
	parts := strings.Split(d, ":")
	m := container.DeviceMapping{CgroupPermissions: "rwm"}
	switch len(parts) {
	case 3:
		m.CgroupPermissions = parts[2]
		if strings.Trim(m.CgroupPermissions, "rwm") != "" || m.CgroupPermissions == "" {
			return m, fmt.Errorf("%q: permissions %q are not a combination of r, w and m", d, parts[2])
		}
		fallthrough
	case 2:
		m.PathInContainer = parts[1]
		fallthrough
	case 1:
		m.PathOnHost = parts[0]
	default:
		return m, fmt.Errorf("%q is not /dev/HOST[:/dev/CONTAINER[:rwm]]", d)
	}
	if m.PathInContainer == "" {
		m.PathInContainer = m.PathOnHost
	}
	if !path.IsAbs(m.PathOnHost) || !path.IsAbs(m.PathInContainer) {
		return m, fmt.Errorf("%q: device paths must be absolute", d)
	}
	return m, nil
}
