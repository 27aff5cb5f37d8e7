package qemu

import (
	"os"
	"testing"
	"time"

	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/sdk/sdktest"
)

// The conformance suite against real VMs of the test guest. Every job of
// the suite boots a VM of its own (about two dozen boots, eight of them at
// once for the isolation test), which under TCG on two cores takes far
// longer than CI's budget for this package, so it runs only when asked:
//
//	BERTH_QEMU_CONFORMANCE=1 go test -run TestConformance -timeout 60m ./qemu
//
// CI runs TestJobInRealVM instead: one VM, one job end to end. The guest's
// processes are not this machine's, so the suite is not told
// LocalProcesses; TestJobInRealVM checks in the guest that a cancelled
// step leaves nothing running.
func TestConformance(t *testing.T) {
	if os.Getenv("BERTH_QEMU_CONFORMANCE") == "" {
		t.Skip("the conformance suite boots a VM for each of its ~24 jobs; set BERTH_QEMU_CONFORMANCE=1 to run it (and -timeout 60m)")
	}
	g := requireGuest(t)
	settings := g.settings(t)
	sdktest.Run(t, func(t *testing.T) sdk.Executor { return New() },
		sdktest.WithSettings(settings), sdktest.WithWait(15*time.Minute))
	if left := qemuProcesses(settings["overlay_dir"].(string)); len(left) > 0 {
		t.Errorf("VMs still run after the suite: %v", left)
		for _, pid := range left {
			_ = killProcess(pid)
		}
	}
	entries, err := os.ReadDir(settings["overlay_dir"].(string))
	if err != nil || len(entries) > 0 {
		t.Errorf("job folders left in overlay_dir after the suite: %v (%v)", entries, err)
	}
}
