package kubernetes

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/berthci/berth/internal/benchstat"
)

// TestTransferBenchmark measures Upload and Download of a 20 MiB archive
// (one incompressible file) through the executor, in-process, against a
// bare exec in the same pod with the same bytes: `tar -x -f -` with the
// archive on stdin, and `tar -c -f - big` to a discarding writer. The
// executor's upload also checks each entry and keeps a local copy of the
// archive to resume from; its download hashes what it hands on. The two
// sides alternate (A B B A …). It runs only with BERTH_K8S_BENCH set (the
// number of rounds per side, default 10), asserts no timing, and prints
// rows for docs/BENCHMARKS.md.
func TestTransferBenchmark(t *testing.T) {
	rounds := benchRounds(t, "rounds")
	e, _ := testExecutor(t, nil)
	h, big := withBigFile(t, e, 4)
	st, c := jobPod(t, e, h)
	archive := tarFiles(t, "big", big).Bytes()
	load0 := benchstat.LoadAverage()
	timed := func(f func() error) time.Duration {
		start := time.Now()
		if err := f(); err != nil {
			t.Fatal(err)
		}
		return time.Since(start)
	}
	exitZero := func(code int, err error) error {
		if err == nil && code != 0 {
			err = fmt.Errorf("exit code %d", code)
		}
		return err
	}
	upload := func() error { return e.Upload(context.Background(), h, "up", bytes.NewReader(archive)) }
	bareUpload := func() error {
		return exitZero(c.exec(context.Background(), st.Namespace, st.Pod, buildContainer,
			[]string{"sh", "-c", `mkdir -p "$1" && cd "$1" && exec tar -x -f -`, "bare", st.BuildDir + "/bare"},
			execIO{stdin: bytes.NewReader(archive), stdout: io.Discard, stderr: io.Discard}))
	}
	download := func() error { return e.Download(context.Background(), h, []string{"big"}, io.Discard) }
	bareDownload := func() error {
		return exitZero(c.exec(context.Background(), st.Namespace, st.Pod, buildContainer,
			[]string{"sh", "-c", `cd "$1" && exec tar -c -f - big`, "bare", st.BuildDir},
			execIO{stdout: io.Discard, stderr: io.Discard}))
	}
	timed(upload) // warm-up, not kept
	timed(bareUpload)
	ua, ub := benchstat.Alternate(rounds, func() time.Duration { return timed(upload) }, func() time.Duration { return timed(bareUpload) })
	timed(download)
	timed(bareDownload)
	da, db := benchstat.Alternate(rounds, func() time.Duration { return timed(download) }, func() time.Duration { return timed(bareDownload) })
	row := func(name string, a, b []time.Duration) {
		ma, mb := benchstat.Median(a), benchstat.Median(b)
		t.Logf("| %s (n=%d each), median (p90) | %s (%s) | %s (%s) | %.2f× |", name, len(a),
			benchstat.Ms(ma), benchstat.Ms(benchstat.Quantile(a, 0.9)), benchstat.Ms(mb), benchstat.Ms(benchstat.Quantile(b, 0.9)), float64(ma)/float64(mb))
	}
	t.Logf("load average %s at the start, %s at the end", load0, benchstat.LoadAverage())
	row("Upload of a 20 MiB archive vs exec `tar -x -f -`", ua, ub)
	row("Download of a 20 MiB file vs exec `tar -c -f -`", da, db)
}
