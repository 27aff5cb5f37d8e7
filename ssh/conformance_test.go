package ssh_test

import (
	"testing"

	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/sdk/sdktest"
	"github.com/berthci/berth/ssh"
	"github.com/berthci/berth/sshexec/sshdtest"
)

// The conformance suite against a real OpenSSH sshd on 127.0.0.1. The
// remote host is this machine, so the process IDs a script prints are
// this machine's and the suite's process checks apply.
func TestConformance(t *testing.T) {
	s := sshdtest.Start(t)
	sdktest.Run(t, func(t *testing.T) sdk.Executor { return ssh.New() },
		sdktest.WithSettings(map[string]any{
			"host":             s.Host,
			"port":             s.Port,
			"user":             s.Account.User,
			"identity_file":    s.Account.ClientKeyFile,
			"known_hosts_file": s.KnownHostsFile,
		}),
		sdktest.LocalProcesses())
}
