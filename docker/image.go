package docker

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/moby/moby/api/pkg/authconfig"
	"github.com/moby/moby/api/types/registry"
	"github.com/moby/moby/client"

	"github.com/berthci/berth/sdk"
)

// imageAPI is what pulling an image needs of the engine.
type imageAPI interface {
	ImageInspect(ctx context.Context, image string, opts ...client.ImageInspectOption) (client.ImageInspectResult, error)
	ImagePull(ctx context.Context, ref string, opts client.ImagePullOptions) (client.ImagePullResponse, error)
}

// pullPolicies returns the pull policies for an image: the job's own
// (which must be allowed: allowed_pull_policies, or pull_policy when that
// is empty), else the pull_policy setting.
func pullPolicies(image string, requested []string, cfg settings) ([]string, error) {
	if len(requested) == 0 {
		return cfg.PullPolicy, nil
	}
	allowed := cfg.AllowedPullPolicies
	source := "allowed_pull_policies"
	if len(allowed) == 0 {
		allowed, source = cfg.PullPolicy, "pull_policy"
	}
	var out []string
	for _, p := range requested {
		if !validPullPolicy(p) {
			return nil, fmt.Errorf("image %q: %q is not a pull policy (always, if-not-present, never)", image, p)
		}
		if slices.Contains(allowed, p) && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("image %q: the job asks for pull policy %s, which the runner does not allow (its %s: %s)",
			image, strings.Join(requested, ", "), source, strings.Join(allowed, ", "))
	}
	return out, nil
}

// checkAllowed refuses an image that no allowed_images pattern matches.
func checkAllowed(image string, patterns []string) error {
	if len(patterns) == 0 {
		return nil
	}
	names := []string{image}
	if named, err := reference.ParseNormalizedNamed(image); err == nil {
		names = append(names, reference.FamiliarString(named), named.String())
	}
	for _, p := range patterns {
		re, err := globRegexp(p)
		if err != nil {
			return err
		}
		for _, n := range names {
			if re.MatchString(n) {
				return nil
			}
		}
	}
	return fmt.Errorf("image %q is not allowed: it matches none of the runner's allowed_images (%s)", image, strings.Join(patterns, ", "))
}

// globRegexp turns an allowed_images pattern into a regular expression:
// ** matches anything, * anything but a slash, ? one character but a slash.
func globRegexp(pattern string) (*regexp.Regexp, error) {
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(pattern); i++ {
		switch c := pattern[i]; {
		case c == '*' && i+1 < len(pattern) && pattern[i+1] == '*':
			b.WriteString(".*")
			i++
		case c == '*':
			b.WriteString("[^/]*")
		case c == '?':
			b.WriteString("[^/]")
		default:
			b.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	b.WriteString("$")
	re, err := regexp.Compile(b.String())
	if err != nil {
		return nil, fmt.Errorf("pattern %q: %w", pattern, err)
	}
	return re, nil
}

// registryOf returns the registry host an image comes from ("docker.io"
// for Docker Hub).
func registryOf(image string) (string, error) {
	named, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return "", fmt.Errorf("%q is not an image name: %w", image, err)
	}
	return reference.Domain(named), nil
}

// normalizeRegistry turns a key of a docker config's auths (which may be
// a URL such as https://index.docker.io/v1/) into a registry host.
func normalizeRegistry(key string) string {
	k := strings.TrimSpace(key)
	k = strings.TrimPrefix(strings.TrimPrefix(k, "https://"), "http://")
	k, _, _ = strings.Cut(k, "/")
	switch k {
	case "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com", "":
		return "docker.io"
	}
	return k
}

// dockerConfig is the part of a DOCKER_AUTH_CONFIG (a docker config.json)
// berth reads.
type dockerConfig struct {
	Auths       map[string]registry.AuthConfig `json:"auths"`
	CredsStore  string                         `json:"credsStore"`
	CredHelpers map[string]string              `json:"credHelpers"`
}

// parseAuthConfig reads DOCKER_AUTH_CONFIG into logins by registry host.
// Credential helpers are not supported: they are programs of the machine
// that wrote the config.
func parseAuthConfig(text string) (map[string]registry.AuthConfig, error) {
	var dc dockerConfig
	if err := json.Unmarshal([]byte(text), &dc); err != nil {
		return nil, fmt.Errorf("not a docker config JSON ({\"auths\": {…}}): %w", err)
	}
	if len(dc.Auths) == 0 && (dc.CredsStore != "" || len(dc.CredHelpers) > 0) {
		return nil, errors.New("credential helpers (credsStore, credHelpers) are not supported; put the logins in \"auths\"")
	}
	out := make(map[string]registry.AuthConfig, len(dc.Auths))
	for key, a := range dc.Auths {
		if a.Auth != "" {
			raw, err := base64.StdEncoding.DecodeString(a.Auth)
			if err != nil {
				return nil, fmt.Errorf("auths[%q].auth is not base64: %w", key, err)
			}
			user, pass, ok := strings.Cut(string(raw), ":")
			if !ok {
				return nil, fmt.Errorf("auths[%q].auth is not base64 of USER:PASSWORD", key)
			}
			a.Username, a.Password = user, pass
			a.Auth = ""
		}
		host := normalizeRegistry(key)
		a.ServerAddress = host
		out[host] = a
	}
	return out, nil
}

// registryAuth returns the X-Registry-Auth value for pulling image: the
// job's credentials for its registry first, then its DOCKER_AUTH_CONFIG
// variable, then the runner's (setting auth_config or the plugin's
// DOCKER_AUTH_CONFIG). An empty result means anonymous.
func registryAuth(image string, job sdk.Job, cfg settings) (string, error) {
	host, err := registryOf(image)
	if err != nil {
		return "", err
	}
	for _, c := range job.Credentials {
		if normalizeRegistry(c.Registry) == host {
			return authconfig.Encode(registry.AuthConfig{Username: c.Username, Password: c.Password, ServerAddress: host})
		}
	}
	for _, src := range []struct{ name, text string }{
		{"the job's DOCKER_AUTH_CONFIG variable", job.ExecutorVariables["DOCKER_AUTH_CONFIG"]},
		{"the runner's auth_config", cfg.AuthConfig},
	} {
		if src.text == "" {
			continue
		}
		auths, err := parseAuthConfig(src.text)
		if err != nil {
			return "", fmt.Errorf("%s: %w", src.name, err)
		}
		if a, ok := auths[host]; ok {
			return authconfig.Encode(a)
		}
	}
	return "", nil
}

// ensureImage makes image available on the engine following policies in
// order: always pulls; if-not-present pulls only when the image is
// missing; never only accepts an image already there. The first policy
// that gets the image wins; when none does, the error names the image,
// each policy tried and why it failed.
func ensureImage(ctx context.Context, api imageAPI, image string, policies []string, auth string) error {
	var errs []error
	present := func() (bool, error) {
		_, err := api.ImageInspect(ctx, image)
		switch {
		case err == nil:
			return true, nil
		case notFound(err):
			return false, nil
		default:
			return false, err
		}
	}
	for _, p := range policies {
		switch p {
		case PullIfNotPresent, PullNever:
			ok, err := present()
			if err != nil {
				return fmt.Errorf("looking for image %q on the engine: %w", image, err)
			}
			if ok {
				return nil
			}
			if p == PullNever {
				errs = append(errs, fmt.Errorf("image %q is not on the docker engine, and pull policy %q forbids pulling it", image, p))
				continue
			}
		}
		err := pull(ctx, api, image, auth)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("pulling image %q: %w", image, ctx.Err())
		}
		errs = append(errs, describePullError(image, p, err))
	}
	if len(errs) == 1 {
		return errs[0]
	}
	return fmt.Errorf("image %q: no pull policy got it (%s): %w", image, strings.Join(policies, ", "), errors.Join(errs...))
}

func pull(ctx context.Context, api imageAPI, image, auth string) error {
	resp, err := api.ImagePull(ctx, image, client.ImagePullOptions{RegistryAuth: auth})
	if err != nil {
		return err
	}
	defer resp.Close()
	return resp.Wait(ctx)
}

// describePullError says why pulling image under policy failed, in words
// that point at the cause: no such image, refused credentials, or a
// registry that cannot be reached.
func describePullError(image, policy string, err error) error {
	host, _ := registryOf(image)
	msg := err.Error()
	switch {
	case cerrdefs.IsUnauthorized(err) || cerrdefs.IsPermissionDenied(err) ||
		strings.Contains(msg, "unauthorized") || strings.Contains(msg, "no basic auth credentials"):
		return fmt.Errorf("pulling image %q (pull policy %q): registry %s refused the login; check DOCKER_AUTH_CONFIG or the job's credentials: %w", image, policy, host, err)
	case unreachable(msg):
		return fmt.Errorf("pulling image %q (pull policy %q): registry %s cannot be reached: %w", image, policy, host, err)
	case cerrdefs.IsNotFound(err) || strings.Contains(msg, "not found") || strings.Contains(msg, "does not exist"):
		return fmt.Errorf("pulling image %q (pull policy %q): registry %s has no such image: %w", image, policy, host, err)
	}
	return fmt.Errorf("pulling image %q (pull policy %q) from registry %s: %w", image, policy, host, err)
}

func unreachable(msg string) bool {
	for _, s := range []string{"dial tcp", "no such host", "connection refused", "i/o timeout", "network is unreachable",
		"TLS handshake", "server gave HTTP response to HTTPS client", "Client.Timeout exceeded", "connection reset"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}
