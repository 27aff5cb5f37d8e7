package plugins

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Signatures. A plugin's signature is an ed25519 signature over the
// message "berth-executor-sha256:<hex digest of the plugin file>"; the
// prefix keeps it from meaning anything to another program that trusts
// the same key. It travels base64-encoded: in the OCI layer's
// AnnotationSignature, or in --signature for a file or URL install.
//
// Public keys are written "ed25519:<base64 of the 32-byte key>" (what
// `berth plugins keygen` prints) or kept in a file holding that line or a
// PEM "PUBLIC KEY" block (openssl pkey -pubout). Private keys are PEM
// "PRIVATE KEY" (PKCS #8) files, as `openssl genpkey -algorithm ed25519`
// writes them.

// KeyPrefix starts a public key written inline.
const KeyPrefix = "ed25519:"

// signedMessage is what a signature signs for a plugin with this digest.
func signedMessage(sha256Hex string) []byte {
	return []byte("berth-executor-sha256:" + strings.ToLower(sha256Hex))
}

// TrustedKey is a public key whose signatures berth accepts.
type TrustedKey struct {
	// ID is the first 16 hex digits of the key's sha256: how messages
	// name it.
	ID  string
	Key ed25519.PublicKey
}

// KeyID names a public key in messages and manifests.
func KeyID(k ed25519.PublicKey) string {
	s := sha256.Sum256(k)
	return hex.EncodeToString(s[:8])
}

// FormatPublicKey writes k the way trusted_keys lists it.
func FormatPublicKey(k ed25519.PublicKey) string {
	return KeyPrefix + base64.StdEncoding.EncodeToString(k)
}

// ParseTrustedKey reads a trusted_keys entry: an inline key
// ("ed25519:BASE64") or the path of a file holding one (inline or PEM).
func ParseTrustedKey(entry string) (TrustedKey, error) {
	text := strings.TrimSpace(entry)
	from := "trusted key " + quoteShort(text)
	if !strings.HasPrefix(text, KeyPrefix) {
		data, err := os.ReadFile(text)
		if err != nil {
			return TrustedKey{}, fmt.Errorf("trusted key %q is neither %s… nor a readable key file: %w", text, KeyPrefix, err)
		}
		from = "trusted key file " + text
		text = strings.TrimSpace(string(data))
	}
	var raw []byte
	if b64, ok := strings.CutPrefix(text, KeyPrefix); ok {
		b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(b64))
		if err != nil || len(b) != ed25519.PublicKeySize {
			return TrustedKey{}, fmt.Errorf("%s: after %s comes the base64 of a 32-byte ed25519 public key", from, KeyPrefix)
		}
		raw = b
	} else {
		block, _ := pem.Decode([]byte(text))
		if block == nil || block.Type != "PUBLIC KEY" {
			return TrustedKey{}, fmt.Errorf("%s holds neither %s… nor a PEM PUBLIC KEY block", from, KeyPrefix)
		}
		pub, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return TrustedKey{}, fmt.Errorf("%s: %w", from, err)
		}
		k, ok := pub.(ed25519.PublicKey)
		if !ok {
			return TrustedKey{}, fmt.Errorf("%s is a %T key; berth trusts ed25519 keys only", from, pub)
		}
		raw = k
	}
	k := ed25519.PublicKey(raw)
	return TrustedKey{ID: KeyID(k), Key: k}, nil
}

func quoteShort(s string) string {
	if len(s) > 24 {
		s = s[:24] + "…"
	}
	return fmt.Sprintf("%q", s)
}

// GenerateKey makes a signing key pair and writes the private key to path
// (PEM, mode 0600) and the public key to path+".pub" (inline form). It
// refuses to overwrite either file.
func GenerateKey(path string) (ed25519.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating an ed25519 key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("encoding the private key: %w", err)
	}
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600},
		{path + ".pub", []byte(FormatPublicKey(pub) + "\n"), 0o644},
	} {
		file, err := os.OpenFile(f.path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, f.mode)
		if err != nil {
			return nil, fmt.Errorf("writing the key: %w", err)
		}
		_, err = file.Write(f.data)
		if cerr := file.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, fmt.Errorf("writing the key to %s: %w", f.path, err)
		}
	}
	return pub, nil
}

// LoadPrivateKey reads an ed25519 private key from a PEM PKCS #8 file.
func LoadPrivateKey(path string) (ed25519.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the signing key: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("signing key %s holds no PEM PRIVATE KEY block (make one with berth plugins keygen)", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", path, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("signing key %s is a %T key; berth signs with ed25519 keys only", path, k)
	}
	return priv, nil
}

// Sign returns the base64 signature of a plugin whose file has the given
// sha256.
func Sign(key ed25519.PrivateKey, sha256Hex string) string {
	return base64.StdEncoding.EncodeToString(ed25519.Sign(key, signedMessage(sha256Hex)))
}

// Trust is the signature policy: the keys trusted and whether a signature
// is required.
type Trust struct {
	Keys    []TrustedKey
	Require bool
}

// ErrUnsigned is returned (wrapped) when a signature is required and the
// plugin has none.
var ErrUnsigned = errors.New("not signed")

// Check checks the base64 signature of a plugin with the given digest and
// returns the ID of the key that made it. With no signature it returns ""
// unless one is required. A signature is checked whenever keys are
// trusted, required or not: a signature that verifies under none of them is
// refused. A signature with no trusted keys to check it against counts as
// none (unverified is "").
func (t Trust) Check(sha256Hex, signature string) (keyID string, err error) {
	signature = strings.TrimSpace(signature)
	if signature == "" {
		if t.Require {
			return "", fmt.Errorf("%w, and signatures are required (--require-signature or [plugins] require_signature)", ErrUnsigned)
		}
		return "", nil
	}
	sig, err := base64.StdEncoding.DecodeString(signature)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return "", fmt.Errorf("bad signature: not the base64 of a %d-byte ed25519 signature", ed25519.SignatureSize)
	}
	if len(t.Keys) == 0 {
		if t.Require {
			return "", errors.New("signed, but no key is trusted to check it: add the publisher's public key to [plugins] trusted_keys (or --trusted-key)")
		}
		return "", nil
	}
	msg := signedMessage(sha256Hex)
	ids := make([]string, len(t.Keys))
	for i, k := range t.Keys {
		if ed25519.Verify(k.Key, msg, sig) {
			return k.ID, nil
		}
		ids[i] = k.ID
	}
	return "", fmt.Errorf("bad signature: it does not verify for sha256 %s under any trusted key (%s)", sha256Hex, strings.Join(ids, ", "))
}
