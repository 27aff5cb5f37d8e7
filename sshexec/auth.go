package sshexec

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/crypto/ssh"
)

// PasswordAuth logs in with a password, offered both as "password" and
// as "keyboard-interactive" authentication (servers often allow only the
// second, e.g. OpenSSH with PAM).
func PasswordAuth(password string) []ssh.AuthMethod {
	answer := func(_, _ string, questions []string, _ []bool) ([]string, error) {
		answers := make([]string, len(questions))
		for i := range answers {
			answers[i] = password
		}
		return answers, nil
	}
	return []ssh.AuthMethod{ssh.Password(password), ssh.KeyboardInteractive(answer)}
}

// KeyFileAuth logs in with the private key in file (OpenSSH, PKCS#1,
// PKCS#8 or SEC 1 PEM), decrypting it with passphrase when it is
// encrypted.
func KeyFileAuth(file, passphrase string) (ssh.AuthMethod, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading the identity file: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(pem)
	var missing *ssh.PassphraseMissingError
	switch {
	case errors.As(err, &missing) && passphrase == "":
		return nil, fmt.Errorf("the identity file %s is encrypted and no passphrase is set for it", file)
	case errors.As(err, &missing):
		signer, err = ssh.ParsePrivateKeyWithPassphrase(pem, []byte(passphrase))
		if err != nil {
			return nil, fmt.Errorf("decrypting the identity file %s with its passphrase: %w", file, err)
		}
	case err != nil:
		return nil, fmt.Errorf("the identity file %s holds no private key ssh can read: %w", file, err)
	}
	return ssh.PublicKeys(signer), nil
}
