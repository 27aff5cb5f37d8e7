package job

import (
	"context"
	"errors"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-plugin"

	"github.com/berthci/berth/host/script"
	"github.com/berthci/berth/internal/syncbuf"
	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/sdk/archive"
	"github.com/berthci/berth/shell"
)

// client serves the real shell executor over real gRPC in this process
// (go-plugin's test connection) and returns the host's client for it.
func client(t *testing.T, e sdk.Executor, settings map[string]any) (*sdk.Client, sdk.Info) {
	t.Helper()
	c, _ := plugin.TestPluginGRPCConn(t, false, map[string]plugin.Plugin{sdk.PluginName: &sdk.GRPCPlugin{Impl: e}})
	t.Cleanup(func() { c.Close() })
	raw, err := c.Dispense(sdk.PluginName)
	if err != nil {
		t.Fatal(err)
	}
	cl := raw.(*sdk.Client)
	ctx := context.Background()
	if err := cl.Configure(ctx, settings); err != nil {
		t.Fatal(err)
	}
	info, err := cl.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return cl, info
}

func shellRunner(t *testing.T) (*Runner, string) {
	t.Helper()
	builds := t.TempDir()
	cl, info := client(t, shell.New(), map[string]any{"builds_dir": builds})
	return &Runner{Executor: cl, Info: info, GracePeriod: 2 * time.Second, Version: "test"}, builds
}

func TestRunResults(t *testing.T) {
	r, _ := shellRunner(t)
	tests := []struct {
		name      string
		job       Job
		status    Status
		code      int
		reason    string
		allowed   bool
		wantInLog []string
		notInLog  []string
	}{
		{
			name:      "success with before_script and variables",
			job:       Job{BeforeScript: []string{"echo before"}, Script: []string{`echo "v=$V"`}, Variables: []script.Variable{{Key: "V", Value: "a 'b' $$c ${UNSET}x"}}},
			status:    Success,
			wantInLog: []string{"before\n", "v=a 'b' $c x\n", "Job succeeded"},
		},
		{
			name:   "exit 7 fails with script_failure and after_script runs",
			job:    Job{Script: []string{"echo start", "exit 7", "echo never"}, AfterScript: []string{"echo after-ran"}},
			status: Failed, code: 7, reason: ScriptFailure,
			wantInLog: []string{"start\n", "after-ran\n", "exit code 7"},
			notInLog:  []string{"never\n"},
		},
		{
			name:   "allowed exit code",
			job:    Job{Script: []string{"exit 3"}, AllowFailure: true, AllowFailureExitCodes: []int{3}},
			status: Failed, code: 3, reason: ScriptFailure, allowed: true,
		},
		{
			name:   "exit code not in the allowed list",
			job:    Job{Script: []string{"exit 4"}, AllowFailure: true, AllowFailureExitCodes: []int{3}},
			status: Failed, code: 4, reason: ScriptFailure,
		},
		{
			name:   "job timeout",
			job:    Job{Script: []string{"sleep 30"}, AfterScript: []string{"echo after-timeout"}, Timeout: time.Second},
			status: Failed, code: -1, reason: Timeout,
			wantInLog: []string{"after-timeout\n"},
		},
		{
			name:      "after_script failure does not change the result",
			job:       Job{Script: []string{"true"}, AfterScript: []string{"exit 9"}},
			status:    Success,
			wantInLog: []string{"after_script exited with code 9"},
		},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.job.ID = "results-" + string(rune('a'+i))
			tt.job.Name = tt.name
			var log syncbuf.Buffer
			res := r.Run(context.Background(), tt.job, &log)
			if res.Status != tt.status || res.ExitCode != tt.code || res.FailureReason != tt.reason || res.AllowedToFail != tt.allowed {
				t.Errorf("result = %+v, want status %s code %d reason %q allowed %v\ntrace:\n%s", res, tt.status, tt.code, tt.reason, tt.allowed, log.String())
			}
			for _, w := range tt.wantInLog {
				if !strings.Contains(log.String(), w) {
					t.Errorf("trace lacks %q:\n%s", w, log.String())
				}
			}
			for _, w := range tt.notInLog {
				if strings.Contains(log.String(), w) {
					t.Errorf("trace has %q:\n%s", w, log.String())
				}
			}
		})
	}
}

func TestMaskedValueSplitAcrossChunksNeverReachesTrace(t *testing.T) {
	r, _ := shellRunner(t)
	const secret = "hunter2-very-secret"
	// The script prints the secret in pieces with pauses, so the executor
	// sends them as separate output chunks; on stdout, on stderr, and on
	// stdout with stderr output arriving between the pieces.
	j := Job{
		ID: "masked", Name: "masked",
		Script: []string{
			`printf 'before hunt'; sleep 0.3; printf 'er2-very'; sleep 0.3; printf -- '-secret after\n'`,
			// (pipes of two streams are read apart: let stdout arrive first)
			`sleep 0.3; printf 'err hunter2-' >&2; sleep 0.3; printf 'very-secret\n' >&2`,
			`printf 'hunter2-'; sleep 0.2; echo noise >&2; sleep 0.2; printf 'very-secret\n'`,
			`echo "$S"`,
		},
		Variables: []script.Variable{{Key: "S", Value: secret, Masked: true}},
	}
	var log syncbuf.Buffer
	res := r.Run(context.Background(), j, &log)
	if res.Status != Success {
		t.Fatalf("job failed: %+v\n%s", res, log.String())
	}
	out := log.String()
	if strings.Contains(out, secret) {
		t.Fatalf("the masked value reached the trace:\n%q", out)
	}
	if n := strings.Count(out, "[MASKED]"); n != 4 {
		t.Errorf("want the secret masked 4 times, found [MASKED] %d times:\n%q", n, out)
	}
	if !strings.Contains(out, "before [MASKED] after") {
		t.Errorf("the text around the split secret is not intact:\n%q", out)
	}
}

func TestGracefulCancelRunsAfterScriptAbortDoesNot(t *testing.T) {
	r, _ := shellRunner(t)
	for _, tc := range []struct {
		name      string
		abort     bool
		wantAfter bool
	}{
		{"graceful", false, true},
		{"abort", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			marker := filepath.Join(t.TempDir(), "started")
			cancel := make(chan struct{})
			ctx, abort := context.WithCancel(context.Background())
			defer abort()
			j := Job{
				ID: "cancel-" + tc.name, Name: tc.name, Cancel: cancel,
				Script:      []string{"touch " + marker, "sleep 60"},
				AfterScript: []string{"echo after-ran"},
			}
			go func() {
				for {
					if _, err := os.Stat(marker); err == nil {
						break
					}
					time.Sleep(20 * time.Millisecond)
				}
				if tc.abort {
					abort()
				} else {
					close(cancel)
				}
			}()
			var log syncbuf.Buffer
			res := r.Run(ctx, j, &log)
			if res.Status != Canceled {
				t.Errorf("status %s, want canceled (%v)\n%s", res.Status, res.Err, log.String())
			}
			if got := strings.Contains(log.String(), "after-ran\n"); got != tc.wantAfter {
				t.Errorf("after_script ran = %v, want %v\n%s", got, tc.wantAfter, log.String())
			}
		})
	}
}

func TestFileVariable(t *testing.T) {
	r, _ := shellRunner(t)
	j := Job{
		ID: "filevar", Name: "filevar",
		Script: []string{
			`test -f "$CONF"`,
			`stat -c %a "$CONF"`,
			`cat "$CONF"`,
			`echo "$CONF" > path.txt`,
		},
		Variables: []script.Variable{{Key: "CONF", Value: "line1\nline 'two'\n", File: true}},
	}
	var log syncbuf.Buffer
	res := r.Run(context.Background(), j, &log)
	if res.Status != Success {
		t.Fatalf("job failed: %+v\n%s", res, log.String())
	}
	for _, w := range []string{"600\n", "line1\nline 'two'\n"} {
		if !strings.Contains(log.String(), w) {
			t.Errorf("trace lacks %q:\n%s", w, log.String())
		}
	}
}

// brokenExecutor fails where told to, to check the host's wording and
// that Cleanup runs anyway.
type brokenExecutor struct {
	*shell.Executor
	failPrepare bool
	failRun     bool
	mu          sync.Mutex
	cleanups    int
}

func (b *brokenExecutor) Prepare(ctx context.Context, j sdk.Job) (sdk.Handle, error) {
	if b.failPrepare {
		return sdk.Handle{}, errors.New("disk on fire")
	}
	return b.Executor.Prepare(ctx, j)
}

func (b *brokenExecutor) Run(ctx context.Context, h sdk.Handle, s sdk.Step, out sdk.Output) (int, error) {
	if b.failRun {
		return -1, errors.New("lost the machine")
	}
	return b.Executor.Run(ctx, h, s, out)
}

func (b *brokenExecutor) Cleanup(ctx context.Context, h sdk.Handle) error {
	b.mu.Lock()
	b.cleanups++
	b.mu.Unlock()
	return b.Executor.Cleanup(ctx, h)
}

func TestSystemFailures(t *testing.T) {
	for _, tc := range []struct {
		name string
		be   *brokenExecutor
		want string
	}{
		{"prepare fails", &brokenExecutor{Executor: shell.New(), failPrepare: true}, "disk on fire"},
		{"run fails", &brokenExecutor{Executor: shell.New(), failRun: true}, "lost the machine"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl, info := client(t, tc.be, map[string]any{"builds_dir": t.TempDir()})
			r := &Runner{Executor: cl, Info: info}
			var log syncbuf.Buffer
			res := r.Run(context.Background(), Job{ID: "sys", Name: "sys", Script: []string{"true"}}, &log)
			if res.Status != Failed || res.FailureReason != SystemFailure || !strings.Contains(res.Err.Error(), tc.want) {
				t.Errorf("result %+v, want a system failure saying %q", res, tc.want)
			}
			if !strings.Contains(log.String(), tc.want) {
				t.Errorf("trace does not say %q:\n%s", tc.want, log.String())
			}
			if tc.be.cleanups != 1 {
				t.Errorf("Cleanup called %d times, want 1", tc.be.cleanups)
			}
		})
	}
}

func TestInputsAreUploaded(t *testing.T) {
	r, _ := shellRunner(t)
	j := Job{
		ID: "inputs", Name: "inputs",
		Script: []string{"cat sub/hello.txt"},
		Inputs: []Input{{Name: "sources", Dir: "sub", Write: func(ctx context.Context, w io.Writer) error {
			src := t.TempDir()
			if err := os.WriteFile(filepath.Join(src, "hello.txt"), []byte("uploaded-content\n"), 0o644); err != nil {
				return err
			}
			return archiveWrite(ctx, w, src)
		}}},
	}
	var log syncbuf.Buffer
	if res := r.Run(context.Background(), j, &log); res.Status != Success {
		t.Fatalf("job failed: %+v\n%s", res, log.String())
	}
	if !strings.Contains(log.String(), "uploaded-content\n") {
		t.Errorf("uploaded file not seen by the job:\n%s", log.String())
	}
}

func archiveWrite(ctx context.Context, w io.Writer, dir string) error {
	return archive.Write(ctx, w, dir, []string{"hello.txt"})
}

func TestOutputsAreCollectedWhenAsked(t *testing.T) {
	r, _ := shellRunner(t)
	collect := func(got *[]string) func(ctx context.Context, rd io.Reader) error {
		return func(ctx context.Context, rd io.Reader) error {
			dir := t.TempDir()
			if err := archive.Extract(ctx, rd, dir); err != nil {
				return err
			}
			data, err := os.ReadFile(filepath.Join(dir, "out", "result.txt"))
			if err == nil {
				*got = append(*got, string(data))
			}
			return nil
		}
	}
	for _, tc := range []struct {
		name      string
		exit      string
		when      OutputWhen
		collected bool
	}{
		{"on success after success", "0", OnSuccess, true},
		{"on success after failure", "1", OnSuccess, false},
		{"on failure after failure", "1", OnFailure, true},
		{"on failure after success", "0", OnFailure, false},
		{"always after failure", "1", Always, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			j := Job{
				ID: "outputs-" + sanitizeTestName(tc.name), Name: tc.name,
				Script:  []string{"mkdir out", "echo made > out/result.txt", "exit " + tc.exit},
				Outputs: []Output{{Name: "artifacts", Paths: []string{"out", "missing"}, When: tc.when, Read: collect(&got)}},
			}
			var log syncbuf.Buffer
			r.Run(context.Background(), j, &log)
			if (len(got) == 1) != tc.collected || (tc.collected && got[0] != "made\n") {
				t.Errorf("collected %q, want collected=%v\n%s", got, tc.collected, log.String())
			}
		})
	}
	t.Run("a failing reader fails a successful job", func(t *testing.T) {
		j := Job{
			ID: "outputs-broken", Name: "broken", Script: []string{"true"},
			Outputs: []Output{{Name: "artifacts", Paths: []string{"."}, Read: func(context.Context, io.Reader) error {
				return errors.New("artifact store is full")
			}}},
		}
		var log syncbuf.Buffer
		res := r.Run(context.Background(), j, &log)
		if res.Status != Failed || res.FailureReason != SystemFailure || !strings.Contains(log.String(), "artifact store is full") {
			t.Errorf("result %+v; want a system failure naming the reader's error\n%s", res, log.String())
		}
	})
}

func sanitizeTestName(s string) string { return strings.ReplaceAll(s, " ", "-") }

// limitedExecutor is the shell executor claiming a maximum job timeout,
// as serverless executors do.
type limitedExecutor struct {
	*shell.Executor
	max time.Duration
	mu  sync.Mutex
	got []time.Duration
}

func (l *limitedExecutor) Info(ctx context.Context) (sdk.Info, error) {
	info, err := l.Executor.Info(ctx)
	info.Capabilities.MaxJobTimeout = l.max
	return info, err
}

func (l *limitedExecutor) Prepare(ctx context.Context, j sdk.Job) (sdk.Handle, error) {
	l.mu.Lock()
	l.got = append(l.got, j.Timeout)
	l.mu.Unlock()
	return l.Executor.Prepare(ctx, j)
}

func TestJobWithoutTimeoutFitsTheExecutorsLimit(t *testing.T) {
	le := &limitedExecutor{Executor: shell.New(), max: 15 * time.Minute}
	cl, info := client(t, le, map[string]any{"builds_dir": t.TempDir()})
	if info.Capabilities.MaxJobTimeout != 15*time.Minute {
		t.Fatalf("MaxJobTimeout did not cross the wire: %v", info.Capabilities.MaxJobTimeout)
	}
	r := &Runner{Executor: cl, Info: info}
	var log syncbuf.Buffer
	r.Run(context.Background(), Job{ID: "limit-default", Name: "a", Script: []string{"true"}}, &log)
	r.Run(context.Background(), Job{ID: "limit-own", Name: "b", Script: []string{"true"}, Timeout: 20 * time.Minute}, &log)
	want := []time.Duration{15 * time.Minute, 20 * time.Minute} // a job's own timeout is kept (Prepare may refuse it)
	if !slices.Equal(le.got, want) {
		t.Errorf("timeouts given to Prepare %v, want %v", le.got, want)
	}
}

// recordingExecutor remembers the jobs Prepare got.
type recordingExecutor struct {
	*shell.Executor
	mu   sync.Mutex
	jobs []sdk.Job
}

func (r *recordingExecutor) Prepare(ctx context.Context, j sdk.Job) (sdk.Handle, error) {
	r.mu.Lock()
	r.jobs = append(r.jobs, j)
	r.mu.Unlock()
	return r.Executor.Prepare(ctx, j)
}

func TestExecutorVariablesReachPrepare(t *testing.T) {
	re := &recordingExecutor{Executor: shell.New()}
	cl, info := client(t, re, map[string]any{"builds_dir": t.TempDir()})
	r := &Runner{Executor: cl, Info: info}
	var log syncbuf.Buffer
	r.Run(context.Background(), Job{ID: "execvars", Name: "v", Script: []string{"true"},
		Variables: []script.Variable{
			{Key: "DOCKER_AUTH_CONFIG", Value: `{"auths":{}}`, Masked: true},
			{Key: "KUBERNETES_CPU_LIMIT", Value: "2"},
			{Key: "OTHER", Value: "x"},
		}}, &log)
	if len(re.jobs) != 1 {
		t.Fatalf("Prepare called %d times", len(re.jobs))
	}
	want := map[string]string{"DOCKER_AUTH_CONFIG": `{"auths":{}}`, "KUBERNETES_CPU_LIMIT": "2"}
	if !maps.Equal(re.jobs[0].ExecutorVariables, want) {
		t.Errorf("ExecutorVariables %v, want %v", re.jobs[0].ExecutorVariables, want)
	}
}
