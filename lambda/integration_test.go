//go:build linux

package lambda

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awslambda "github.com/aws/aws-sdk-go-v2/service/lambda"

	"github.com/berthci/berth/sdk"
)

// captured is one step's output.
type captured struct{ stdout, stderr bytes.Buffer }

func outputs(n int) ([]*captured, sdk.StepOutput) {
	c := make([]*captured, n)
	for i := range c {
		c[i] = &captured{}
	}
	return c, func(i int) sdk.Output { return sdk.Output{Stdout: &c[i].stdout, Stderr: &c[i].stderr} }
}

func emulated(t *testing.T, timeoutSeconds int, extra map[string]any) (*Executor, *emulator) {
	t.Helper()
	em := startEmulator(t, timeoutSeconds, t.TempDir())
	e := New(testCredentials())
	s := settingsFor(em, strconv.Itoa(timeoutSeconds)+"s")
	for k, v := range extra {
		s[k] = v
	}
	if err := e.Configure(t.Context(), s); err != nil {
		t.Fatal(err)
	}
	return e, em
}

// A job whose output does not fit in a Lambda response ends with a line
// saying how much was cut; the other streams, the later step and the files
// still come back whole.
func TestOutputBeyondResponseLimit(t *testing.T) {
	e, _ := emulated(t, 60, nil)
	h, err := e.Prepare(t.Context(), sdk.Job{ID: "big", Shell: "sh", DownloadPaths: []string{"out"}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Cleanup(context.Background(), h)
	const written = 20 << 20
	steps := []sdk.Step{
		{Name: "script", Shell: "sh", Script: fmt.Sprintf("head -c %d /dev/zero | tr '\\0' x\necho to-stderr >&2\nmkdir out && echo kept > out/file\nexit 4", written)},
		{Name: "after", Shell: "sh", Script: "echo after", When: sdk.Always},
	}
	outs, out := outputs(len(steps))
	res, err := e.RunSteps(t.Context(), h, steps, out)
	if err != nil {
		t.Fatal(err)
	}
	if r := res[0]; r.ExitCode != 4 || r.Err != nil || r.Skipped {
		t.Errorf("the script ended with %+v, want exit code 4", r)
	}
	if r := res[1]; r.ExitCode != 0 || r.Skipped || outs[1].stdout.String() != "after\n" {
		t.Errorf("the after step ended with %+v and stdout %q, want it run", r, outs[1].stdout.String())
	}
	if got := outs[0].stderr.String(); got != "to-stderr\n" {
		t.Errorf("stderr is %q, want it whole", got)
	}
	stdout := outs[0].stdout.String()
	kept, line, found := strings.Cut(stdout, "\n")
	m := regexp.MustCompile(`^\[berth\] stdout of step "script" cut: [0-9.]+ MiB \(([0-9]+) bytes\) dropped, as a Lambda response holds at most 6\.0 MiB\n$`).FindStringSubmatch(line)
	switch {
	case !found || m == nil:
		t.Fatalf("stdout does not end with the cut line: %q", stdout[max(0, len(stdout)-300):])
	case strings.Trim(kept, "x") != "" || len(kept) < 4<<20:
		t.Errorf("stdout keeps %d bytes before the cut line, want at least 4 MiB of what the script wrote", len(kept))
	}
	if dropped, _ := strconv.Atoi(m[1]); dropped+len(kept) != written {
		t.Errorf("the cut line says %d bytes were dropped and %d came, the script wrote %d", dropped, len(kept), written)
	}
	var tarball bytes.Buffer
	if err := e.Download(t.Context(), h, []string{"out/file"}, &tarball); err != nil {
		t.Fatalf("Download: %v", err)
	}
	if got := tarContents(t, &tarball); got["out/file"] != "kept\n" || len(got) != 1 {
		t.Errorf("downloaded %v, want out/file only", got)
	}
	if err := e.Download(t.Context(), h, []string{"elsewhere"}, io.Discard); err == nil || !strings.Contains(err.Error(), "not among the job's DownloadPaths") {
		t.Errorf("Download of a path not declared at Prepare returned %v; want an error saying so", err)
	}
}

func tarContents(t *testing.T, r io.Reader) map[string]string {
	t.Helper()
	got := map[string]string{}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return got
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		got[strings.TrimSuffix(hdr.Name, "/")] = string(b)
	}
}

// A job still running near the function's timeout is stopped by the
// function, which says so; it is reported as a timeout, not a system
// failure, and the later steps are not run.
func TestDeadline(t *testing.T) {
	e, _ := emulated(t, 4, nil)
	h, err := e.Prepare(t.Context(), sdk.Job{ID: "late", Shell: "sh", Timeout: 4 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Cleanup(context.Background(), h)
	steps := []sdk.Step{
		{Name: "script", Shell: "sh", Script: "echo started\nsleep 1000", Timeout: 4 * time.Second, GracePeriod: 10 * time.Second},
		{Name: "after_script", Shell: "sh", Script: "echo after", When: sdk.Always},
	}
	outs, out := outputs(len(steps))
	res, err := e.RunSteps(t.Context(), h, steps, out)
	if err != nil {
		t.Fatal(err)
	}
	if r := res[0]; !r.TimedOut || r.Err != nil || r.Canceled {
		t.Errorf("the script past the deadline ended with %+v; want TimedOut and no system error", r)
	}
	if got := outs[0].stdout.String(); got != "started\n" {
		t.Errorf("stdout is %q", got)
	}
	if got := outs[0].stderr.String(); !strings.Contains(got, "[berth] job stopped: the Lambda invocation ends in") {
		t.Errorf("stderr %q does not say why the job was stopped", got)
	}
	if r := res[1]; !r.Skipped || outs[1].stdout.Len() > 0 {
		t.Errorf("the after_script after the deadline ended with %+v, stdout %q; want it skipped", r, outs[1].stdout.String())
	}
	// The environment is fine for the next job.
	res, err = e.RunSteps(t.Context(), h, []sdk.Step{{Name: "again", Shell: "sh", Script: "exit 0"}}, out)
	if err != nil || res[0].ExitCode != 0 || res[0].Err != nil {
		t.Errorf("the next invocation ended with %+v, %v", res, err)
	}
}

// What the function refuses comes back as a system failure carrying the
// function's own message, though the emulator sets no FunctionError.
func TestFunctionErrorReported(t *testing.T) {
	e, _ := emulated(t, 30, map[string]any{"build_dir": "/berth-not-scratch/build"})
	h, err := e.Prepare(t.Context(), sdk.Job{ID: "misplaced", Shell: "sh"})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Cleanup(context.Background(), h)
	_, out := outputs(1)
	_, err = e.RunSteps(t.Context(), h, []sdk.Step{{Name: "script", Shell: "sh", Script: "true"}}, out)
	want := `the Lambda function "function" in us-east-1 failed: berth function: the build directory "/berth-not-scratch/build" is not inside the function's scratch directory`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("RunSteps returned %v; want an error containing %q", err, want)
	}
}

// The function refuses a request of another protocol version, naming both.
func TestFunctionRefusesOtherVersion(t *testing.T) {
	em := startEmulator(t, 30, t.TempDir())
	client := sdkClient(t, em)
	o, err := client.Invoke(t.Context(), &awslambda.InvokeInput{FunctionName: aws.String("function"), Payload: []byte(`{"version":99,"steps":[]}`)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = decodeResponse("function", o.StatusCode, o.FunctionError, o.Payload)
	if err == nil || !strings.Contains(err.Error(), "protocol version 99, this function speaks version 1") {
		t.Errorf("a version 99 request gave %v (body %s)", err, o.Payload)
	}
}

func sdkClient(t testing.TB, em *emulator) *awslambda.Client {
	t.Helper()
	cfg, err := config.LoadDefaultConfig(context.Background(), config.WithRegion("us-east-1"),
		config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider("AKIDBERTHTEST", "berth-test-secret", "")),
		config.WithRetryMaxAttempts(1))
	if err != nil {
		t.Fatal(err)
	}
	return awslambda.NewFromConfig(cfg, func(o *awslambda.Options) { o.BaseEndpoint = aws.String(em.endpoint) })
}

// Files uploaded before the job reach its build directory, each tree in
// its directory; the scratch directory is empty once the job is done.
func TestUploadReachesFunction(t *testing.T) {
	e, em := emulated(t, 30, map[string]any{"environment": []string{"GREETING=hello there"}})
	h, err := e.Prepare(t.Context(), sdk.Job{ID: "files", Shell: "sh"})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Cleanup(context.Background(), h)
	for _, up := range []struct{ dir, name, body string }{{"", "top.txt", "top\n"}, {"sub/dir", "in.txt", "in\n"}} {
		if err := e.Upload(t.Context(), h, up.dir, bytes.NewReader(tarOf(t, entry{name: up.name, typ: tar.TypeReg, body: []byte(up.body)}))); err != nil {
			t.Fatal(err)
		}
	}
	outs, out := outputs(1)
	res, err := e.RunSteps(t.Context(), h, []sdk.Step{{Name: "script", Shell: "sh", Script: `cat top.txt sub/dir/in.txt; echo "$GREETING"; pwd; echo tmp > "$TMPDIR/x"`}}, out)
	if err != nil || res[0].ExitCode != 0 {
		t.Fatalf("RunSteps: %+v %v; stderr %q", res, err, outs[0].stderr.String())
	}
	if want := "top\nin\nhello there\n" + h.BuildDir + "\n"; outs[0].stdout.String() != want {
		t.Errorf("stdout is %q, want %q", outs[0].stdout.String(), want)
	}
	left, err := readDirNames(em.scratch)
	if err != nil || len(left) > 0 {
		t.Errorf("the scratch directory holds %v after the job (%v); want it empty", left, err)
	}
}

func readDirNames(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names, err
}

// A cancelled job's invocation cannot be stopped: RunSteps reports the job
// cancelled at once, and the invocation keeps its max_concurrency slot
// until the function ends it, so the next job waits for it instead of
// invoking a busy environment (which crashes the emulator).
func TestCancelAbandonsInvocation(t *testing.T) {
	e, _ := emulated(t, 6, nil)
	prepare := func(id string) sdk.Handle {
		h, err := e.Prepare(t.Context(), sdk.Job{ID: id, Shell: "sh"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Cleanup(context.Background(), h) })
		return h
	}
	first := prepare("first")
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(time.Second, cancel)
	outs, out := outputs(2)
	res, err := e.RunSteps(ctx, first, []sdk.Step{
		{Name: "script", Shell: "sh", Script: "sleep 1000"},
		{Name: "after_script", Shell: "sh", Script: "echo after", When: sdk.Always},
	}, out)
	if err != nil {
		t.Fatal(err)
	}
	if r := res[0]; !r.Canceled || r.Err != nil || r.Skipped {
		t.Errorf("the cancelled step ended with %+v; want Canceled", r)
	}
	if r := res[1]; !r.Canceled || !r.Skipped {
		t.Errorf("the step after it ended with %+v; want it skipped", r)
	}
	if got := outs[0].stderr.String(); !strings.Contains(got, "a Lambda invocation cannot be stopped") {
		t.Errorf("stderr %q does not say the invocation runs on", got)
	}

	second := prepare("second")
	outs, out = outputs(1)
	res, err = e.RunSteps(t.Context(), second, []sdk.Step{{Name: "script", Shell: "sh", Script: "echo second"}}, out)
	if err != nil || res[0].ExitCode != 0 || res[0].Err != nil || outs[0].stdout.String() != "second\n" {
		t.Errorf("the job after the cancelled one ended with %+v, %v, stdout %q", res, err, outs[0].stdout.String())
	}
}
