package localrun

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/berthci/berth/host/job"
	"github.com/berthci/berth/host/pipeline"
	"github.com/berthci/berth/sdk"
)

// fakeRunner stands in for host/job.Runner in the scheduling tests (the
// real executor runs in cmd/berth's tests): it uploads every input, fails
// the jobs whose script is "fail", and hands each output a tar stream with
// one file per path, named after the job.
type fakeRunner struct {
	mu     sync.Mutex
	inputs map[string][]string // job → input names
}

func (f *fakeRunner) Run(ctx context.Context, j job.Job, sink io.Writer) job.Result {
	f.mu.Lock()
	for _, in := range j.Inputs {
		f.inputs[j.Name] = append(f.inputs[j.Name], in.Name)
	}
	f.mu.Unlock()
	for _, in := range j.Inputs {
		if err := in.Write(ctx, io.Discard); err != nil {
			return job.Result{Status: job.Failed, FailureReason: job.SystemFailure, Err: err}
		}
	}
	res := job.Result{Status: job.Success}
	if strings.Join(j.Script, ";") == "fail" {
		res = job.Result{Status: job.Failed, FailureReason: job.ScriptFailure, ExitCode: 1}
	}
	io.WriteString(sink, "log of "+j.Name+"\n")
	for _, o := range j.Outputs {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, p := range o.Paths {
			body := "from " + j.Name
			tw.WriteHeader(&tar.Header{Name: p + "/file", Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
			io.WriteString(tw, body)
		}
		tw.Close()
		if err := o.Read(ctx, &buf); err != nil {
			return job.Result{Status: job.Failed, FailureReason: job.SystemFailure, Err: err}
		}
	}
	return res
}

type recordUI struct {
	mu     sync.Mutex
	events []Event
}

func (u *recordUI) Event(e Event) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.events = append(u.events, e)
}

func (u *recordUI) JobOutput(string, int) io.WriteCloser { return nopCloser{io.Discard} }

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// TestRunSchedulesConcurrently runs a plan with many jobs at once (meant
// for -race) and checks artifacts reach the jobs that need them.
func TestRunSchedulesConcurrently(t *testing.T) {
	p, err := pipeline.Parse("ci.yml", []byte(`
stages: [build, test, deploy]
build:
  stage: build
  parallel: 4
  script: [x]
  artifacts: {paths: [out]}
test:
  stage: test
  parallel: 6
  needs: [build]
  script: [x]
broken:
  stage: test
  needs: []
  script: [fail]
deploy:
  stage: deploy
  script: [x]
cleanup:
  stage: deploy
  when: on_failure
  script: [x]
`))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	plan, err := NewPlan(context.Background(), Config{Pipeline: p, Project: &Project{Dir: dir}, Predefined: Predefined(nil, dir, 1, timeZero())})
	if err != nil {
		t.Fatal(err)
	}
	runner := &fakeRunner{inputs: map[string][]string{}}
	ui := &recordUI{}
	results, err := plan.Run(context.Background(), Options{Runner: runner, Executor: sdk.Info{Name: "fake"}, Concurrency: 4, UI: ui, CacheDir: t.TempDir(), RunID: "t"})
	if err != nil {
		t.Fatal(err)
	}
	status := map[string]string{}
	for _, r := range results {
		status[r.Name] = r.Status
	}
	want := map[string]string{"build 1/4": "success", "test 6/6": "success", "broken": "failed", "deploy": "skipped", "cleanup": "success"}
	for name, s := range want {
		if status[name] != s {
			t.Errorf("%s: %s, want %s (all: %v)", name, status[name], s, status)
		}
	}
	if got := strings.Join(runner.inputs["test 3/6"], ","); got != "sources,artifacts of build 1/4,artifacts of build 2/4,artifacts of build 3/4,artifacts of build 4/4" {
		t.Errorf("inputs of test 3/6: %s", got)
	}
	if got := strings.Join(runner.inputs["broken"], ","); got != "sources" {
		t.Errorf("inputs of broken (needs: []): %s", got)
	}
}
