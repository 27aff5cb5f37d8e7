package plugins

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func newKey(t *testing.T) (ed25519.PrivateKey, TrustedKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return priv, TrustedKey{ID: KeyID(pub), Key: pub}
}

func TestTrustCheck(t *testing.T) {
	const sum = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
	signer, trusted := newKey(t)
	stranger, _ := newKey(t)
	good := Sign(signer, sum)
	tests := []struct {
		name    string
		trust   Trust
		sig     string
		wantKey string
		wantErr string
	}{
		{"unsigned, not required", Trust{Keys: []TrustedKey{trusted}}, "", "", ""},
		{"unsigned, required", Trust{Keys: []TrustedKey{trusted}, Require: true}, "", "", "signatures are required"},
		{"signed by a trusted key", Trust{Keys: []TrustedKey{trusted}}, good, trusted.ID, ""},
		{"signed by a trusted key, required", Trust{Keys: []TrustedKey{trusted}, Require: true}, good, trusted.ID, ""},
		{"signed by another key", Trust{Keys: []TrustedKey{trusted}}, Sign(stranger, sum), "", "bad signature"},
		{"signature of another file", Trust{Keys: []TrustedKey{trusted}}, Sign(signer, strings.Repeat("0", 64)), "", "bad signature"},
		{"not base64", Trust{Keys: []TrustedKey{trusted}}, "!!!", "", "not the base64"},
		{"signed, no keys, not required", Trust{}, good, "", ""},
		{"signed, no keys, required", Trust{Require: true}, good, "", "no key is trusted"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key, err := tt.trust.Check(sum, tt.sig)
			if tt.wantErr != "" {
				wantErr(t, err, tt.wantErr)
				return
			}
			if err != nil || key != tt.wantKey {
				t.Errorf("Check = %q, %v; want %q, nil", key, err, tt.wantKey)
			}
		})
	}
}

func TestParseTrustedKey(t *testing.T) {
	dir := t.TempDir()
	_, k := newKey(t)
	inline := FormatPublicKey(k.Key)
	der, err := x509.MarshalPKIXPublicKey(k.Key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name, entry, wantErr string
	}{
		{"inline", inline, ""},
		{"file with the inline form", write("team.pub", inline+"\n"), ""},
		{"PEM file", write("team.pem", string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))), ""},
		{"short key", KeyPrefix + base64.StdEncoding.EncodeToString([]byte("short")), "32-byte"},
		{"missing file", filepath.Join(dir, "nope.pub"), "neither ed25519:"},
		{"file with junk", write("junk.pub", "hello"), "PEM PUBLIC KEY"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseTrustedKey(tt.entry)
			if tt.wantErr != "" {
				wantErr(t, err, tt.wantErr)
				return
			}
			if err != nil || !got.Key.Equal(k.Key) || got.ID != k.ID {
				t.Errorf("ParseTrustedKey = %+v, %v; want the key %s", got, err, k.ID)
			}
		})
	}
}

func TestGenerateKeySignsWhatItsPublicKeyVerifies(t *testing.T) {
	path := filepath.Join(t.TempDir(), "team-key")
	pub, err := GenerateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := LoadPrivateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ParseTrustedKey(path + ".pub")
	if err != nil || !k.Key.Equal(pub) {
		t.Fatalf("the .pub file reads as %+v, %v", k, err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("private key file mode %v (%v), want 0600", fi.Mode(), err)
	}
	sum := strings.Repeat("ab", 32)
	if id, err := (Trust{Keys: []TrustedKey{k}, Require: true}).Check(sum, Sign(priv, sum)); err != nil || id != k.ID {
		t.Errorf("a signature by the generated key: %q, %v", id, err)
	}
	if _, err := GenerateKey(path); err == nil {
		t.Errorf("GenerateKey overwrote an existing key")
	}
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	_, k := newKey(t)
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.toml", "concurrent = 2\n[plugins]\ntrusted_keys = [\""+FormatPublicKey(k.Key)+"\"]\nrequire_signature = true\n[[runners]]\nexecutor = \"shell\"\n")
	cfg, err := LoadConfig(good, false)
	if err != nil {
		t.Fatal(err)
	}
	trust, err := cfg.Trust(nil, false)
	if err != nil || !trust.Require || len(trust.Keys) != 1 || trust.Keys[0].ID != k.ID {
		t.Errorf("trust = %+v, %v", trust, err)
	}
	_, err = LoadConfig(write("typo.toml", "[plugins]\nrequire_signatures = true\n"), false)
	wantErr(t, err, "typo.toml", "plugins.require_signatures")
	_, err = LoadConfig(write("broken.toml", "[plugins]\ntrusted_keys = [\n"), false)
	wantErr(t, err, "broken.toml:")
	if cfg, err := LoadConfig(filepath.Join(dir, "none.toml"), true); err != nil || cfg.RequireSignature {
		t.Errorf("a missing optional config: %+v, %v", cfg, err)
	}
	_, err = LoadConfig(filepath.Join(dir, "none.toml"), false)
	wantErr(t, err, "none.toml")
}
