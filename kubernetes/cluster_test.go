package kubernetes

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8s "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/sdk/sdktest"
)

// The images test/k8s/cluster.sh imports into the test cluster's
// containerd (nothing is pulled).
const (
	busyboxImage     = "busybox:local"
	busyboxBashImage = "busybox-bash:local"
	// noTarImage has bash as sh and busybox's applets but tar.
	noTarImage  = "busybox-notar:local"
	clusterHint = "start the test cluster: test/k8s/cluster.sh up (needs BUILD), then export KUBECONFIG=$BUILD/cluster/admin.kubeconfig"
)

// testCluster returns a client for the cluster at $KUBECONFIG, or skips
// the test when none answers.
func testCluster(t testing.TB) (string, k8s.Interface) {
	t.Helper()
	path := os.Getenv("KUBECONFIG")
	if path == "" {
		t.Skip("KUBECONFIG is not set: " + clusterHint)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Skipf("no cluster configuration at %s (%v): %s", path, err, clusterHint)
	}
	rc.Timeout = 10 * time.Second
	cs, err := k8s.NewForConfig(rc)
	if err != nil {
		t.Skipf("no client for %s (%v): %s", rc.Host, err, clusterHint)
	}
	if _, err := cs.Discovery().ServerVersion(); err != nil {
		t.Skipf("no cluster answers at %s (%v): %s", rc.Host, err, clusterHint)
	}
	return path, cs
}

func testSettings(kubeconfig string, extra map[string]any) map[string]any {
	s := map[string]any{"kubeconfig": kubeconfig, "namespace": "default", "runner_name": "berth-test", "pull_policy": PullIfNotPresent}
	for k, v := range extra {
		s[k] = v
	}
	return s
}

func testExecutor(t *testing.T, extra map[string]any) (*Executor, k8s.Interface) {
	t.Helper()
	path, cs := testCluster(t)
	e := New()
	if err := e.Configure(t.Context(), testSettings(path, extra)); err != nil {
		t.Fatal(err)
	}
	return e, cs
}

func jobID(t *testing.T) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")) + "-" + hex.EncodeToString(b)
}

// prepare prepares job and cleans it up at the end of the test.
func prepare(t *testing.T, e *Executor, job sdk.Job) sdk.Handle {
	t.Helper()
	if job.ID == "" {
		job.ID = jobID(t)
	}
	if job.Image.Name == "" {
		job.Image.Name = busyboxImage
	}
	job.Timeout = 10 * time.Minute
	t.Cleanup(func() {
		if err := e.Cleanup(context.Background(), sdk.Handle{JobID: job.ID}); err != nil {
			t.Errorf("Cleanup: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	h, err := e.Prepare(ctx, job)
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	return h
}

// syncBuffer is a buffer safe for concurrent writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func run(t *testing.T, ctx context.Context, e *Executor, h sdk.Handle, script string) (int, string, string, error) {
	t.Helper()
	var stdout, stderr syncBuffer
	code, err := e.Run(ctx, h, sdk.Step{Name: "script", Script: script, Shell: "sh", GracePeriod: 2 * time.Second}, sdk.Output{Stdout: &stdout, Stderr: &stderr})
	return code, stdout.String(), stderr.String(), err
}

func TestConformance(t *testing.T) {
	path, _ := testCluster(t)
	sdktest.Run(t, func(t *testing.T) sdk.Executor { return New() },
		sdktest.WithSettings(testSettings(path, nil)),
		sdktest.WithJob(sdk.Job{Image: sdk.Image{Name: busyboxBashImage}}))
}

func TestExitCodeAndStreams(t *testing.T) {
	e, _ := testExecutor(t, nil)
	h := prepare(t, e, sdk.Job{})
	code, stdout, stderr, err := run(t, t.Context(), e, h, "echo to-stdout\necho to-stderr >&2\nexit 7\n")
	if err != nil || code != 7 {
		t.Fatalf("Run = %d, %v; want 7, nil", code, err)
	}
	if stdout != "to-stdout\n" || stderr != "to-stderr\n" {
		t.Errorf("stdout %q, stderr %q; want them apart", stdout, stderr)
	}
	// A non-zero exit is not run again: the step runs once.
	code, stdout, _, err = run(t, t.Context(), e, h, "echo once >> count\ncat count\nexit 3\n")
	if err != nil || code != 3 || stdout != "once\n" {
		t.Errorf("Run = %d, %v with %q; want 3 and one line", code, err, stdout)
	}
}

func TestServiceByAlias(t *testing.T) {
	e, _ := testExecutor(t, nil)
	h := prepare(t, e, sdk.Job{Services: []sdk.Service{{
		// The image's entrypoint is /bin/sh: the service's own replaces it.
		Image:     sdk.Image{Name: busyboxImage, Entrypoint: []string{"sh", "-c"}},
		Aliases:   []string{"web"},
		Command:   []string{`mkdir -p /tmp/www && echo "$GREETING" >/tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www`},
		Variables: map[string]string{"GREETING": "hello from the service"},
	}}})
	code, stdout, stderr, err := run(t, t.Context(), e, h, `i=0
until wget -q -O - http://web:8080/index.html; do
	i=$((i + 1)); [ "$i" -lt 100 ] || exit 1; sleep 0.2
done
`)
	if err != nil || code != 0 || stdout != "hello from the service\n" {
		t.Errorf("Run = %d, %v; stdout %q, stderr %q", code, err, stdout, stderr)
	}
}

func TestCancelLeavesNoPod(t *testing.T) {
	e, cs := testExecutor(t, nil)
	h := prepare(t, e, sdk.Job{})
	st, err := decodeState(h)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	var stdout, stderr syncBuffer
	done := make(chan error, 1)
	go func() {
		_, err := e.Run(ctx, h, sdk.Step{Name: "script", Script: "echo started\nsleep 300\n", Shell: "sh", GracePeriod: time.Second}, sdk.Output{Stdout: &stdout, Stderr: &stderr})
		done <- err
	}()
	for !strings.Contains(stdout.String(), "started") {
		select {
		case err := <-done:
			t.Fatalf("Run ended before the cancel: %v (stderr %q)", err, stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	cancel()
	if err := <-done; err == nil {
		t.Error("a cancelled Run returned no error")
	}
	if err := e.Cleanup(t.Context(), h); err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	_, err = cs.CoreV1().Pods(st.Namespace).Get(t.Context(), st.Pod, metav1.GetOptions{})
	if !apierrors.IsNotFound(err) {
		t.Errorf("pod %s after Cleanup: %v; want it gone", st.Pod, err)
	}
}

func TestMissingImageFailsFast(t *testing.T) {
	// poll_timeout 10s: Prepare must name the image's problem, not run
	// into the timeout.
	e, cs := testExecutor(t, map[string]any{"poll_timeout": "10s"})
	image := "berth-test/no-such-image:404"
	id := jobID(t)
	_, err := e.Prepare(t.Context(), sdk.Job{ID: id, Image: sdk.Image{Name: image}, Timeout: time.Minute})
	t.Cleanup(func() { _ = e.Cleanup(context.Background(), sdk.Handle{JobID: id}) })
	if err == nil || !strings.Contains(err.Error(), image) || strings.Contains(err.Error(), "poll_timeout") {
		t.Fatalf("Prepare with a missing image: %v; want an error naming %s", err, image)
	}
	t.Logf("Prepare: %v", err)
	if _, err := cs.CoreV1().Pods("default").Get(t.Context(), podName(id), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the failed job's pod: %v; want it deleted", err)
	}
}

func TestUnschedulableFailsFast(t *testing.T) {
	e, _ := testExecutor(t, map[string]any{"poll_timeout": "20s", "node_selector": map[string]any{"berth.ci/no-such-node": "x"}})
	id := jobID(t)
	_, err := e.Prepare(t.Context(), sdk.Job{ID: id, Image: sdk.Image{Name: busyboxImage}, Timeout: time.Minute})
	t.Cleanup(func() { _ = e.Cleanup(context.Background(), sdk.Handle{JobID: id}) })
	if err == nil || !strings.Contains(err.Error(), "cannot be scheduled") || strings.Contains(err.Error(), "poll_timeout") {
		t.Fatalf("Prepare with an impossible node selector: %v; want the scheduler's reason", err)
	}
	t.Logf("Prepare: %v", err)
}

func TestDeletedPodIsAFailure(t *testing.T) {
	e, cs := testExecutor(t, nil)
	h := prepare(t, e, sdk.Job{})
	st, _ := decodeState(h)
	var stdout, stderr syncBuffer
	done := make(chan error, 1)
	go func() {
		_, err := e.Run(t.Context(), h, sdk.Step{Name: "script", Script: "echo started\nsleep 300\n", Shell: "sh"}, sdk.Output{Stdout: &stdout, Stderr: &stderr})
		done <- err
	}()
	for !strings.Contains(stdout.String(), "started") {
		select {
		case err := <-done:
			t.Fatalf("Run ended early: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	zero := int64(0)
	if err := cs.CoreV1().Pods(st.Namespace).Delete(t.Context(), st.Pod, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	err := <-done
	if err == nil || !strings.Contains(err.Error(), "deleted") {
		t.Errorf("Run in a deleted pod: %v; want an error saying the pod was deleted", err)
	}
}

func TestMaskedVariableNotInPodSpec(t *testing.T) {
	e, cs := testExecutor(t, nil)
	const secret = "berth-masked-value-5f3a9c"
	h := prepare(t, e, sdk.Job{
		ExecutorVariables: map[string]string{"MASKED_TOKEN": secret},
		Services:          []sdk.Service{{Image: sdk.Image{Name: busyboxImage, Entrypoint: []string{"sleep"}}, Command: []string{"300"}}},
	})
	st, _ := decodeState(h)
	// The host puts masked and file variables into the step's script.
	code, stdout, stderr, err := run(t, t.Context(), e, h, "export MASKED_TOKEN='"+secret+"'\nprintf '%s' \"$MASKED_TOKEN\" > token-file\nwc -c < token-file\n")
	if err != nil || code != 0 || strings.TrimSpace(stdout) != "25" {
		t.Fatalf("Run = %d, %v; stdout %q, stderr %q", code, err, stdout, stderr)
	}
	pod, err := cs.CoreV1().Pods(st.Namespace).Get(t.Context(), st.Pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	text, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(text, []byte(secret)) {
		t.Errorf("the masked value is in the pod read back from the API: %s", text)
	}
}

func TestUploadNeedsTar(t *testing.T) {
	e, _ := testExecutor(t, nil)
	h := prepare(t, e, sdk.Job{Image: sdk.Image{Name: noTarImage}})
	err := e.Upload(t.Context(), h, "", strings.NewReader(tarOf(t, []string{"file"})))
	if err == nil || !strings.Contains(err.Error(), "has no tar") {
		t.Errorf("Upload without tar: %v; want an error saying the image has no tar", err)
	}
}

func TestPrepareTwiceReusesThePod(t *testing.T) {
	e, _ := testExecutor(t, nil)
	job := sdk.Job{ID: jobID(t)}
	h1 := prepare(t, e, job)
	if code, _, _, err := run(t, t.Context(), e, h1, "echo kept > mark\n"); err != nil || code != 0 {
		t.Fatalf("Run: %d, %v", code, err)
	}
	h2 := prepare(t, e, job)
	code, stdout, _, err := run(t, t.Context(), e, h2, "cat mark\n")
	if err != nil || code != 0 || stdout != "kept\n" {
		t.Errorf("after a second Prepare: %d, %v, %q; want the first pod reused", code, err, stdout)
	}
}

func TestExpiredPodsAreDeleted(t *testing.T) {
	path, cs := testCluster(t)
	// A plugin whose clock is 3 hours behind stamps an expiry that is past
	// for the next plugin of the same runner.
	runner := "berth-test-sweep-" + jobID(t)[len("testexpiredpodsaredeleted-"):]
	settings := testSettings(path, map[string]any{"runner_name": runner})
	old := New(WithClock(func() time.Time { return time.Now().Add(-3 * time.Hour) }))
	if err := old.Configure(t.Context(), settings); err != nil {
		t.Fatal(err)
	}
	stale := prepare(t, old, sdk.Job{})
	st, _ := decodeState(stale)
	other := New()
	if err := other.Configure(t.Context(), testSettings(path, map[string]any{"runner_name": runner + "-other"})); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Pods(st.Namespace).Get(t.Context(), st.Pod, metav1.GetOptions{}); err != nil {
		t.Fatalf("another runner's plugin touched the pod: %v", err)
	}
	if err := New().Configure(t.Context(), settings); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Pods(st.Namespace).Get(t.Context(), st.Pod, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the expired pod after a new plugin's Configure: %v; want it deleted", err)
	}
}

func TestOutOfMemoryIsNamed(t *testing.T) {
	e, _ := testExecutor(t, map[string]any{"memory_limit": "64m"})
	h := prepare(t, e, sdk.Job{})
	code, _, stderr, err := run(t, t.Context(), e, h, "head -c 400m /dev/zero | tail -c 300m >/dev/null\n")
	if err != nil || code == 0 || !strings.Contains(stderr, "ran out of memory") {
		t.Errorf("Run = %d, %v; stderr %q; want a failure saying the container ran out of memory", code, err, stderr)
	}
}
