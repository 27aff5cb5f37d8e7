package plugins

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"

	"github.com/BurntSushi/toml"
)

// Config is the [plugins] table of berth's config.toml:
//
//	[plugins]
//	trusted_keys = ["ed25519:…", "/etc/berth/team.pub"]
//	require_signature = true
type Config struct {
	// TrustedKeys are the public keys whose plugin signatures berth
	// accepts: inline ("ed25519:BASE64") or paths of key files.
	TrustedKeys []string `toml:"trusted_keys"`
	// RequireSignature refuses every plugin not signed by a trusted key,
	// at install and at verify.
	RequireSignature bool `toml:"require_signature"`
}

// DefaultConfigPath is berth's config file when none is named:
// $BERTH_CONFIG, else $XDG_CONFIG_HOME/berth/config.toml (default
// ~/.config/berth/config.toml).
func DefaultConfigPath(env Env) string {
	if p := env("BERTH_CONFIG"); p != "" {
		return p
	}
	if x := env("XDG_CONFIG_HOME"); x != "" {
		return filepath.Join(x, "berth", "config.toml")
	}
	if h := env("HOME"); h != "" {
		return filepath.Join(h, ".config", "berth", "config.toml")
	}
	return ""
}

// LoadConfig reads the [plugins] table of the config file at path. A
// missing file is an empty Config when optional is true (the default
// path), an error otherwise. Unknown keys in [plugins] are an error that
// names them.
func LoadConfig(path string, optional bool) (Config, error) {
	var doc struct {
		Plugins Config `toml:"plugins"`
	}
	if path == "" {
		return Config{}, nil
	}
	md, err := toml.DecodeFile(path, &doc)
	if err != nil {
		if optional && errors.Is(err, fs.ErrNotExist) {
			return Config{}, nil
		}
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return Config{}, fmt.Errorf("%s:%d:%d: %s", path, pe.Position.Line, pe.Position.Col, pe.Message)
		}
		return Config{}, fmt.Errorf("reading config %s: %w", path, err)
	}
	var unknown []string
	for _, k := range md.Undecoded() {
		if len(k) > 1 && k[0] == "plugins" {
			unknown = append(unknown, k.String())
		}
	}
	if len(unknown) > 0 {
		return Config{}, fmt.Errorf("%s: unknown setting %s (the [plugins] table has trusted_keys and require_signature)", path, strings.Join(unknown, ", "))
	}
	return doc.Plugins, nil
}

// Trust parses the trusted keys, adds extra ones (from --trusted-key), and
// returns the signature policy; require adds to RequireSignature.
func (c Config) Trust(extraKeys []string, require bool) (Trust, error) {
	t := Trust{Require: c.RequireSignature || require}
	for _, e := range append(append([]string(nil), c.TrustedKeys...), extraKeys...) {
		k, err := ParseTrustedKey(e)
		if err != nil {
			return Trust{}, err
		}
		t.Keys = append(t.Keys, k)
	}
	return t, nil
}
