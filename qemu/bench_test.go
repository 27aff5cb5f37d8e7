package qemu

import (
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berthci/berth/sdk"
)

// Boot-to-first-stage time of the qemu executor with the test guest: from
// Prepare's call (overlay, QEMU start, boot, SSH login, build directory)
// to the end of a first step `cut -d' ' -f1 /proc/uptime`, for
// $BERTH_QEMU_BENCH jobs one after another, each with its own VM.
//
//	BERTH_QEMU_BENCH=10 go test -run TestBenchmarkBootToFirstStage -v ./qemu
func TestBenchmarkBootToFirstStage(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("BERTH_QEMU_BENCH"))
	if n <= 0 {
		t.Skip("a benchmark: set BERTH_QEMU_BENCH to the number of jobs to time (each boots a VM)")
	}
	g := requireGuest(t)
	e := New()
	must(t, e.Configure(t.Context(), g.settings(t)), "Configure")
	var total, prepare, stage, uptime []time.Duration
	for i := range n {
		ctx := t.Context()
		start := time.Now()
		h, err := e.Prepare(ctx, sdk.Job{ID: "bench-" + strconv.Itoa(i), Shell: "sh"})
		must(t, err, "Prepare")
		prepared := time.Now()
		code, out, stderr, err := run(ctx, e, h, "sh", "cut -d' ' -f1 /proc/uptime")
		end := time.Now()
		if err != nil || code != 0 {
			t.Fatalf("first step: exit code %d, error %v, stderr %q", code, err, stderr)
		}
		must(t, e.Cleanup(ctx, h), "Cleanup")
		secs, err := strconv.ParseFloat(strings.TrimSpace(out), 64)
		must(t, err, "the guest's uptime %q", out)
		total = append(total, end.Sub(start))
		prepare = append(prepare, prepared.Sub(start))
		stage = append(stage, end.Sub(prepared))
		uptime = append(uptime, time.Duration(secs*float64(time.Second)))
		t.Logf("job %d: boot to first stage %s (Prepare %s, first stage %s; guest uptime %.2f s)", i+1,
			total[i].Round(time.Millisecond), prepare[i].Round(time.Millisecond), stage[i].Round(time.Millisecond), secs)
	}
	e.mu.Lock()
	accel := e.cfg.accel
	e.mu.Unlock()
	t.Logf("%d jobs, accel %s, 256 MiB, 1 CPU: median / min / max", n, accel)
	for _, m := range []struct {
		name string
		d    []time.Duration
	}{
		{"boot to first stage", total},
		{"Prepare", prepare},
		{"first stage (one SSH session + the group check)", stage},
		{"guest uptime at the first stage (guest clock)", uptime},
	} {
		s := slices.Clone(m.d)
		slices.Sort(s)
		t.Logf("| %s | %s | %s | %s |", m.name, s[len(s)/2].Round(time.Millisecond), s[0].Round(time.Millisecond), s[len(s)-1].Round(time.Millisecond))
	}
}
