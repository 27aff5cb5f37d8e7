//go:build linux

package lambda

import (
	"context"
	"maps"
	"path/filepath"
	"testing"

	"github.com/berthci/berth/lambda/protocol"
	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/sdk/sdktest"
)

// atEndpoint is the executor with the endpoint of its own emulator added to
// whatever settings it is configured with: the suite's settings are the
// same for every executor it makes, the emulators are not.
type atEndpoint struct {
	*Executor
	endpoint string
}

func (a atEndpoint) Configure(ctx context.Context, settings map[string]any) error {
	s := maps.Clone(settings)
	s["endpoint"] = a.endpoint
	return a.Executor.Configure(ctx, s)
}

func TestConformance(t *testing.T) {
	needRIE(t)
	// One scratch directory for all the suite's emulators: the suite's
	// settings (build_dir) are the same for each executor. Their
	// invocations never overlap: each subtest stops its emulators.
	scratch := t.TempDir()
	settings := map[string]any{
		"function_name":   "function",
		"region":          "us-east-1",
		"timeout":         "60s",
		"build_dir":       filepath.Join(scratch, "build"),
		"max_concurrency": 1,
	}
	sdktest.Run(t, func(t *testing.T) sdk.Executor {
		em := startEmulator(t, 60, scratch)
		return atEndpoint{Executor: New(testCredentials()), endpoint: em.endpoint}
	},
		sdktest.WithSettings(settings),
		// The function's steps run on this machine under the emulator.
		sdktest.LocalProcesses(),
		sdktest.WithOutputLimit(protocol.ResponseLimit))
}
