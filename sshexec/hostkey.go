package sshexec

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// HostKeyPolicy says which host keys Dial accepts.
type HostKeyPolicy struct {
	// KnownHostsFile is an OpenSSH known_hosts file. A file that does not
	// exist knows no host.
	KnownHostsFile string
	// Alias, when set, is the name the key is looked up under instead of
	// the address dialled, as OpenSSH's HostKeyAlias: a VM reached through
	// a new forwarded port each time is known under one name.
	Alias string
	// AcceptAny turns strict checking off: any key is accepted. A key that
	// the file does not know or contradicts is still logged, with its
	// fingerprint.
	AcceptAny bool
}

// HostKeyError is a host key that strict checking refused: the host is not
// in the known_hosts file (Unknown), or it is with another key.
type HostKeyError struct {
	// Host is the name the key was looked up under ("[127.0.0.1]:2222"
	// style for a port other than 22).
	Host string
	// KeyType and Fingerprint describe the key the server offered.
	KeyType     string
	Fingerprint string
	// File is the known_hosts file.
	File    string
	Unknown bool
	// Known are the keys the file holds for the host (empty when Unknown).
	Known []knownhosts.KnownKey
	// Line is the known_hosts line that would accept the offered key.
	Line string
}

func (e *HostKeyError) Error() string {
	offered := fmt.Sprintf("%s key %s", e.KeyType, e.Fingerprint)
	if e.Unknown {
		return fmt.Sprintf("host %s is not in the known_hosts file %s (it offered %s); if that is the host's key, add this line to the file: %s",
			e.Host, e.File, offered, e.Line)
	}
	known := make([]string, 0, len(e.Known))
	for _, k := range e.Known {
		known = append(known, fmt.Sprintf("%s key %s (%s line %d)", k.Key.Type(), ssh.FingerprintSHA256(k.Key), k.Filename, k.Line))
	}
	return fmt.Sprintf("host key of %s does not match the known_hosts file %s: it offered %s, the file has %s; "+
		"someone may be intercepting the connection, or the host was reinstalled (then remove its old key: ssh-keygen -R '%s' -f %s)",
		e.Host, e.File, offered, strings.Join(known, ", "), e.Host, e.File)
}

// callback builds the host key check for a connection to addr
// (host:port) and the host key algorithms to ask for: those of the keys
// the file knows for the host, so that a server with several keys offers
// the one the file has.
func (p HostKeyPolicy) callback(addr string, log *slog.Logger) (ssh.HostKeyCallback, []string, error) {
	lookup := addr
	if p.Alias != "" {
		lookup = net.JoinHostPort(p.Alias, "22")
	}
	name := knownhosts.Normalize(lookup)
	var db ssh.HostKeyCallback
	if p.KnownHostsFile != "" {
		_, err := os.Stat(p.KnownHostsFile)
		switch {
		case err == nil:
			db, err = knownhosts.New(p.KnownHostsFile)
			if err != nil {
				return nil, nil, fmt.Errorf("ssh: reading the known_hosts file %s: %w", p.KnownHostsFile, err)
			}
		case errors.Is(err, fs.ErrNotExist):
		default:
			return nil, nil, fmt.Errorf("ssh: the known_hosts file: %w", err)
		}
	}
	if db == nil && !p.AcceptAny {
		if p.KnownHostsFile == "" {
			return nil, nil, errors.New("ssh: no known_hosts file to check host keys against (and strict host key checking is on)")
		}
	}
	check := func(_ string, remote net.Addr, key ssh.PublicKey) error {
		var err error
		if db != nil {
			err = db(lookup, remote, key)
		} else {
			err = &knownhosts.KeyError{}
		}
		var ke *knownhosts.KeyError
		if errors.As(err, &ke) {
			err = &HostKeyError{
				Host: name, KeyType: key.Type(), Fingerprint: ssh.FingerprintSHA256(key),
				File: p.KnownHostsFile, Unknown: len(ke.Want) == 0, Known: ke.Want,
				Line: knownhosts.Line([]string{name}, key),
			}
		}
		if err != nil && p.AcceptAny {
			level := slog.LevelDebug
			if hk, ok := err.(*HostKeyError); !ok || !hk.Unknown {
				level = slog.LevelWarn // a contradicted or revoked key is worth a look
			}
			log.Log(context.Background(), level, "ssh: accepting a host key that strict checking would refuse",
				"host", name, "key", key.Type()+" "+ssh.FingerprintSHA256(key), "reason", err.Error())
			return nil
		}
		return err
	}
	return check, knownAlgorithms(db, lookup), nil
}

// knownAlgorithms lists the host key algorithms for the key types db
// knows for host; nil (the library's defaults) when it knows none.
func knownAlgorithms(db ssh.HostKeyCallback, host string) []string {
	if db == nil {
		return nil
	}
	// A key no file holds makes the check list the ones it has for host.
	probe, err := ssh.NewPublicKey(ed25519.PublicKey(make([]byte, ed25519.PublicKeySize)))
	if err != nil {
		return nil
	}
	var ke *knownhosts.KeyError
	if !errors.As(db(host, &net.TCPAddr{IP: net.IPv4zero}, probe), &ke) {
		return nil
	}
	var algos []string
	for _, k := range ke.Want {
		for _, a := range algorithmsFor(k.Key.Type()) {
			if !slices.Contains(algos, a) {
				algos = append(algos, a)
			}
		}
	}
	return algos
}

// algorithmsFor gives the host key algorithms that can use a key type.
func algorithmsFor(keyType string) []string {
	switch keyType {
	case ssh.KeyAlgoRSA:
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	case ssh.CertAlgoRSAv01:
		return []string{ssh.CertAlgoRSASHA512v01, ssh.CertAlgoRSASHA256v01, ssh.CertAlgoRSAv01}
	default:
		return []string{keyType}
	}
}
