package docker

import (
	"testing"

	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/sdk/sdktest"
)

func TestConformance(t *testing.T) {
	c := engineClient(t)
	image := testImage(t, c, "berth-test/busybox-bash", imageOptions{bash: true})
	sdktest.Run(t, func(t *testing.T) sdk.Executor { return New() },
		sdktest.WithSettings(map[string]any{"pull_policy": "if-not-present", "runner_name": "berth-test"}),
		sdktest.WithJob(sdk.Job{Image: sdk.Image{Name: image}}))
}
