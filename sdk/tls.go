package sdk

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"time"
)

// EnvTLS carries the plugin's side of the mutual TLS the host set up: the
// host generates a fresh P-256 certificate for each end of every plugin
// process it starts. (go-plugin's AutoMTLS does the same with P-521 keys,
// which costs about 30 ms of CPU per plugin start; P-256 costs under 2.)
// Serve removes the variable from its environment as soon as it read it,
// so nothing the plugin starts inherits the key.
const EnvTLS = "BERTH_PLUGIN_TLS"

type tlsBundle struct {
	ServerCert []byte `json:"server_cert"`
	ServerKey  []byte `json:"server_key"`
	ClientCert []byte `json:"client_cert"`
}

// NewTLS returns the host's TLS config for one plugin process and the
// value of EnvTLS to start that process with.
func NewTLS() (*tls.Config, string, error) {
	serverCert, serverKey, err := selfSigned()
	if err != nil {
		return nil, "", err
	}
	clientCert, clientKey, err := selfSigned()
	if err != nil {
		return nil, "", err
	}
	pair, err := tls.X509KeyPair(clientCert, clientKey)
	if err != nil {
		return nil, "", fmt.Errorf("client certificate: %w", err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(serverCert)
	b, err := json.Marshal(tlsBundle{ServerCert: serverCert, ServerKey: serverKey, ClientCert: clientCert})
	if err != nil {
		return nil, "", err
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{pair},
		RootCAs:      roots,
		ServerName:   "localhost",
		MinVersion:   tls.VersionTLS13,
	}
	return cfg, base64.StdEncoding.EncodeToString(b), nil
}

// pluginTLS is Serve's go-plugin TLSProvider: the server side of NewTLS.
// Without EnvTLS it returns nil, and go-plugin falls back to its own
// AutoMTLS when the host asked for that.
func pluginTLS() (*tls.Config, error) {
	v, ok := os.LookupEnv(EnvTLS)
	if !ok {
		return nil, nil
	}
	os.Unsetenv(EnvTLS)
	raw, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return nil, fmt.Errorf("%s is not base64: %w", EnvTLS, err)
	}
	var b tlsBundle
	if err := json.Unmarshal(raw, &b); err != nil {
		return nil, fmt.Errorf("%s: %w", EnvTLS, err)
	}
	pair, err := tls.X509KeyPair(b.ServerCert, b.ServerKey)
	if err != nil {
		return nil, fmt.Errorf("%s: server certificate: %w", EnvTLS, err)
	}
	clients := x509.NewCertPool()
	if !clients.AppendCertsFromPEM(b.ClientCert) {
		return nil, fmt.Errorf("%s: the client certificate does not parse", EnvTLS)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{pair},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    clients,
		MinVersion:   tls.VersionTLS13,
	}, nil
}

// selfSigned makes a P-256 certificate for "localhost" that is its own CA,
// valid for a day; it returns certificate and key as PEM.
func selfSigned() (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generating a TLS key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "localhost", Organization: []string{"berth"}},
		DNSNames:              []string{"localhost"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("making a TLS certificate: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), nil
}
