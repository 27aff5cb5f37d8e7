package benchstat_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/berthci/berth/internal/benchstat"
	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/shell"
)

// TestTrivialJob runs a job through the real shell executor: the marks
// come in order; a failure comes back as an error.
func TestTrivialJob(t *testing.T) {
	e := shell.New()
	dir := t.TempDir()
	if err := e.Configure(t.Context(), map[string]any{"builds_dir": dir}); err != nil {
		t.Fatal(err)
	}
	m, err := benchstat.TrivialJob(context.Background(), e, sdk.Job{ID: "trivial-1"})
	if err != nil {
		t.Fatalf("TrivialJob: %v", err)
	}
	for i := 1; i < len(m); i++ {
		if m[i].Before(m[i-1]) || m[i].IsZero() {
			t.Errorf("marks %v: not in order", m)
		}
	}
	// Builds under a regular file: Prepare fails, and so does the job.
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	bad := shell.New()
	if err := bad.Configure(t.Context(), map[string]any{"builds_dir": filepath.Join(file, "builds")}); err != nil {
		t.Fatal(err)
	}
	if _, err := benchstat.TrivialJob(context.Background(), bad, sdk.Job{ID: "trivial-2"}); err == nil {
		t.Error("TrivialJob with builds under a file: no error")
	}
}
