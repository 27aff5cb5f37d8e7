package bwrapexec_test

import (
	"testing"

	"github.com/berthci/berth/examples/custom-executor/bwrapexec"
	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/sdk/sdktest"
)

// TestConformance runs berth's conformance suite. Scripts print process
// IDs of the sandbox's PID namespace, which mean nothing on the host, so
// the suite's process checks (sdktest.LocalProcesses) stay off; the tests
// in bwrap_test.go check instead that no process of a sandbox is left.
func TestConformance(t *testing.T) {
	skipWithoutBwrap(t)
	builds := t.TempDir()
	sdktest.Run(t, func(*testing.T) sdk.Executor { return bwrapexec.New() },
		sdktest.WithSettings(map[string]any{"builds_dir": builds}))
}
