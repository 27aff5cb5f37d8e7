//go:build linux

package shell_test

import (
	"testing"

	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/sdk/sdktest"
	"github.com/berthci/berth/shell"
)

func TestConformance(t *testing.T) {
	sdktest.Run(t, func(t *testing.T) sdk.Executor { return shell.New() },
		sdktest.WithSettings(map[string]any{"builds_dir": t.TempDir()}),
		sdktest.LocalProcesses())
}
