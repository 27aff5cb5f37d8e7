package kubernetes

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	k8s "k8s.io/client-go/kubernetes"

	"github.com/berthci/berth/internal/k8stest"
	"github.com/berthci/berth/internal/stepwrap"
	"github.com/berthci/berth/internal/syncbuf"
	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/sdk/sdktest"
)

// The images test/k8s/cluster.sh imports into the test cluster's
// containerd (nothing is pulled).
const (
	busyboxImage     = "busybox:local"
	busyboxBashImage = "busybox-bash:local"
	// noTarImage has bash as sh and busybox's applets but tar.
	noTarImage = "busybox-notar:local"
)

// testCluster returns the test cluster's kubeconfig and a client, or
// skips the test when none answers.
func testCluster(t testing.TB) (string, k8s.Interface) { return k8stest.Cluster(t) }

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

// jobPod returns where a prepared job runs and the executor's cluster
// connection, for a test's own execs into the pod.
func jobPod(t *testing.T, e *Executor, h sdk.Handle) (jobState, *cluster) {
	t.Helper()
	st, err := decodeState(h)
	if err != nil {
		t.Fatal(err)
	}
	_, c, err := e.current()
	if err != nil {
		t.Fatal(err)
	}
	return st, c
}

func run(t *testing.T, ctx context.Context, e *Executor, h sdk.Handle, script string) (int, string, string, error) {
	t.Helper()
	var stdout, stderr syncbuf.Buffer
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

// TestCancelAndTimeoutLeaveNothing: a step stopped by a cancel or by its
// timeout (the SDK's server turns Step.Timeout into the context's
// deadline, as here) ends in an error, and Cleanup leaves neither the pod
// nor the job's pull Secret, as the API server tells.
func TestCancelAndTimeoutLeaveNothing(t *testing.T) {
	for _, tt := range []struct {
		name string
		stop func(ctx context.Context, started func() bool) (context.Context, context.CancelFunc)
	}{
		{"cancel", func(ctx context.Context, started func() bool) (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(ctx)
			go func() {
				for !started() && ctx.Err() == nil {
					time.Sleep(50 * time.Millisecond)
				}
				cancel()
			}()
			return ctx, cancel
		}},
		{"timeout", func(ctx context.Context, _ func() bool) (context.Context, context.CancelFunc) {
			return context.WithTimeout(ctx, 8*time.Second)
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e, cs := testExecutor(t, nil)
			h := prepare(t, e, credentialJob(t, "registry.invalid"))
			st, err := decodeState(h)
			if err != nil {
				t.Fatal(err)
			}
			if st.Secret == "" {
				t.Fatal("a job with registry logins has no pull Secret in its handle")
			}
			if _, err := cs.CoreV1().Secrets(st.Namespace).Get(t.Context(), st.Secret, metav1.GetOptions{}); err != nil {
				t.Fatalf("the job's pull Secret while it runs: %v", err)
			}
			var stdout, stderr syncbuf.Buffer
			ctx, cancel := tt.stop(t.Context(), func() bool { return strings.Contains(stdout.String(), "started") })
			defer cancel()
			_, err = e.Run(ctx, h, sdk.Step{Name: "script", Script: "echo started\nsleep 300\n", Shell: "sh", GracePeriod: time.Second}, sdk.Output{Stdout: &stdout, Stderr: &stderr})
			if err == nil {
				t.Errorf("a stopped Run returned no error (stdout %q, stderr %q)", stdout.String(), stderr.String())
			}
			if tt.name == "cancel" && !strings.Contains(stdout.String(), "started") {
				t.Errorf("the step did not start before it was stopped: stdout %q, stderr %q, %v", stdout.String(), stderr.String(), err)
			}
			if err := e.Cleanup(t.Context(), h); err != nil {
				t.Fatalf("Cleanup: %v", err)
			}
			if _, err := cs.CoreV1().Pods(st.Namespace).Get(t.Context(), st.Pod, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				t.Errorf("pod %s after Cleanup: %v; want it gone", st.Pod, err)
			}
			if _, err := cs.CoreV1().Secrets(st.Namespace).Get(t.Context(), st.Secret, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				t.Errorf("Secret %s after Cleanup: %v; want it gone", st.Secret, err)
			}
		})
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
	var stdout, stderr syncbuf.Buffer
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

// TestFailingUploadIsNamedAtOnce: tar in the pod fails on the first entry
// of a 20 MiB archive; Upload reports tar's error, not a broken connection
// (which is what a minute later the client saw while the rest of the
// archive had no reader).
func TestFailingUploadIsNamedAtOnce(t *testing.T) {
	e, _ := testExecutor(t, nil)
	h := prepare(t, e, sdk.Job{})
	if code, _, stderr, err := run(t, t.Context(), e, h, "echo a file > x"); err != nil || code != 0 {
		t.Fatalf("the step: exit %d, %v, stderr %q", code, err, stderr)
	}
	err := e.Upload(t.Context(), h, "", tarFiles(t, "x/big", make([]byte, 20<<20)))
	if err == nil || !strings.Contains(err.Error(), "tar exited with") || strings.Contains(err.Error(), "broke") {
		t.Errorf("Upload of x/big where x is a file: %v; want tar's error", err)
	}
}

// TestStepWrapperArrivesIntact: the build container's copy of the step
// wrapper, given in its environment, is the wrapper byte for byte (kubelet
// expands $(NAME) and $$ in environment values).
func TestStepWrapperArrivesIntact(t *testing.T) {
	e, _ := testExecutor(t, nil)
	st, c := jobPod(t, e, prepare(t, e, sdk.Job{}))
	var stdout, stderr bytes.Buffer
	code, err := c.exec(t.Context(), st.Namespace, st.Pod, buildContainer, []string{"sh", "-c", `printf '%s' "$` + stepwrap.Env + `"`}, execIO{stdout: &stdout, stderr: &stderr})
	if err != nil || code != 0 || stdout.String() != stepwrap.Script() {
		t.Errorf("the wrapper in the container: exit %d, %v, %d bytes (want %d), equal: %v; stderr %q", code, err, stdout.Len(), len(stepwrap.Script()), stdout.String() == stepwrap.Script(), stderr.String())
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

// TestEvictionIsNamed: kubelet evicts a pod that writes past its
// ephemeral storage limit (a real eviction, by the node's eviction
// manager); the running step fails naming the eviction, not a lost exec.
func TestEvictionIsNamed(t *testing.T) {
	e, _ := testExecutor(t, map[string]any{"ephemeral_storage_limit": "8m"})
	h := prepare(t, e, sdk.Job{})
	// Into the container's writable layer: kubelet reads its size from
	// containerd every few seconds (an emptyDir's only every minute).
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	code, stdout, stderr, err := run(t, ctx, e, h, "head -c 40m /dev/zero >/tmp/fill\necho written\nsleep 600\n")
	if err == nil || !strings.Contains(err.Error(), "evicted") || ctx.Err() != nil {
		t.Errorf("Run = %d, %v; stdout %q, stderr %q; want an error saying the pod was evicted", code, err, stdout, stderr)
	}
	t.Logf("Run: %v", err)
}

func TestRunAsUserAndGroup(t *testing.T) {
	e, _ := testExecutor(t, map[string]any{"run_as_user": 1234, "run_as_group": 2345})
	// The service serves the IDs it runs with: the pod-level
	// securityContext must reach it too.
	h := prepare(t, e, sdk.Job{Services: []sdk.Service{{
		Image:   sdk.Image{Name: busyboxImage, Entrypoint: []string{"sh", "-c"}},
		Aliases: []string{"ids"},
		Command: []string{`mkdir -p /tmp/www && { id -u; id -g; } >/tmp/www/ids && exec httpd -f -p 8081 -h /tmp/www`},
	}}})
	code, stdout, stderr, err := run(t, t.Context(), e, h, "id -u; id -g\n")
	if err != nil || code != 0 || stdout != "1234\n2345\n" {
		t.Errorf("the build container's IDs: %d, %v; stdout %q, stderr %q; want 1234 and 2345", code, err, stdout, stderr)
	}
	code, stdout, stderr, err = run(t, t.Context(), e, h, `i=0
until wget -q -O - http://ids:8081/ids; do
	i=$((i + 1)); [ "$i" -lt 100 ] || exit 1; sleep 0.2
done
`)
	if err != nil || code != 0 || stdout != "1234\n2345\n" {
		t.Errorf("the service's IDs: %d, %v; stdout %q, stderr %q; want 1234 and 2345", code, err, stdout, stderr)
	}
	// The build volume (an emptyDir) takes the user's files without an
	// fsGroup: steps, Upload and Download all write or read there.
	code, stdout, stderr, err = run(t, t.Context(), e, h, "echo written > file && mkdir -p sub/dir && cat file && stat -c '%u:%g' file sub/dir\n")
	if err != nil || code != 0 || stdout != "written\n1234:2345\n1234:2345\n" {
		t.Errorf("writing in the build directory: %d, %v; stdout %q, stderr %q", code, err, stdout, stderr)
	}
	if err := e.Upload(t.Context(), h, "up", strings.NewReader(tarOf(t, []string{"dir/", "dir/file"}))); err != nil {
		t.Fatalf("Upload as user 1234: %v", err)
	}
	var archive bytes.Buffer
	if err := e.Download(t.Context(), h, []string{"up", "file"}, &archive); err != nil {
		t.Fatalf("Download as user 1234: %v", err)
	}
	var names []string
	for tr := tar.NewReader(&archive); ; {
		hdr, err := tr.Next()
		if err != nil {
			break
		}
		names = append(names, strings.TrimSuffix(hdr.Name, "/"))
	}
	if got := strings.Join(names, ","); got != "up,up/dir,up/dir/file,file" {
		t.Errorf("Download: entries %s; want up, up/dir, up/dir/file and file", got)
	}
}

// credentialJob is a job with one registry login whose password is new
// for each call.
func credentialJob(t *testing.T, registry string) sdk.Job {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return sdk.Job{ID: jobID(t), Credentials: []sdk.Credential{{Registry: registry, Username: "berth-user", Password: "berth-pw-" + hex.EncodeToString(b)}}}
}

// secretGone fails the test unless the Secret is gone.
func secretGone(t *testing.T, cs k8s.Interface, ns, name, when string) {
	t.Helper()
	if _, err := cs.CoreV1().Secrets(ns).Get(context.Background(), name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("registry Secret %s/%s %s: %v; want it deleted", ns, name, when, err)
	}
}

func podGone(t *testing.T, cs k8s.Interface, ns, name, when string) {
	t.Helper()
	if _, err := cs.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("pod %s/%s %s: %v; want it deleted", ns, name, when, err)
	}
}

func TestPullSecretLifecycle(t *testing.T) {
	path, _ := testCluster(t)
	e, cs := testExecutor(t, nil)
	job := credentialJob(t, "registry.berth-test.invalid")
	login := job.Credentials[0]
	h := prepare(t, e, job)
	if bytes.Contains(h.State, []byte(login.Password)) {
		t.Errorf("the password is in the handle: %s", h.State)
	}
	st, err := decodeState(h)
	if err != nil || st.Secret != pullSecretName(job.ID) {
		t.Fatalf("state %+v, %v; want it to name the job's Secret", st, err)
	}
	ctx := t.Context()
	pod, err := cs.CoreV1().Pods(st.Namespace).Get(ctx, st.Pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s, err := cs.CoreV1().Secrets(st.Namespace).Get(ctx, st.Secret, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the job's registry Secret during the job: %v", err)
	}
	if s.Type != corev1.SecretTypeDockerConfigJson {
		t.Errorf("Secret type %s; want %s", s.Type, corev1.SecretTypeDockerConfigJson)
	}
	want := map[string]string{"username": login.Username, "password": login.Password, "auth": base64.StdEncoding.EncodeToString([]byte(login.Username + ":" + login.Password))}
	if got := decodeAuths(t, s.Data[corev1.DockerConfigJsonKey]); len(got) != 1 || fmt.Sprint(got[login.Registry]) != fmt.Sprint(want) {
		t.Errorf("auths %v; want %s: %v", got, login.Registry, want)
	}
	for _, k := range []string{LabelJob, LabelRunner} {
		if s.Labels[k] == "" || s.Labels[k] != pod.Labels[k] {
			t.Errorf("Secret label %s=%q; the pod's is %q", k, s.Labels[k], pod.Labels[k])
		}
	}
	for _, k := range []string{AnnotationJob, AnnotationExpires} {
		if s.Annotations[k] == "" || s.Annotations[k] != pod.Annotations[k] {
			t.Errorf("Secret annotation %s=%q; the pod's is %q", k, s.Annotations[k], pod.Annotations[k])
		}
	}
	if refs := pod.Spec.ImagePullSecrets; len(refs) != 1 || refs[0].Name != st.Secret {
		t.Errorf("the pod's imagePullSecrets %v; want [%s]", refs, st.Secret)
	}
	if o := s.OwnerReferences; len(o) != 1 || o[0].Kind != "Pod" || o[0].Name != pod.Name || o[0].UID != pod.UID {
		t.Errorf("Secret owners %+v; want the pod %s (%s)", o, pod.Name, pod.UID)
	}
	if code, _, _, err := run(t, ctx, e, h, "true\n"); err != nil || code != 0 {
		t.Errorf("a step in the pod: %d, %v", code, err)
	}
	// Without its owner the Secret is not the garbage collector's: only
	// Cleanup can delete it now.
	if _, err := cs.CoreV1().Secrets(st.Namespace).Patch(ctx, st.Secret, types.MergePatchType, []byte(`{"metadata":{"ownerReferences":null}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}

	// A plugin process that did not prepare the job cleans up from the
	// handle, twice.
	fresh := New()
	if err := fresh.Configure(ctx, testSettings(path, nil)); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := fresh.Cleanup(ctx, h); err != nil {
			t.Fatalf("Cleanup %d: %v", i+1, err)
		}
	}
	podGone(t, cs, st.Namespace, st.Pod, "after Cleanup")
	secretGone(t, cs, st.Namespace, st.Secret, "after Cleanup")
}

// fakeRegistry is an HTTP registry on 127.0.0.1 (kubelet reaches
// localhost registries over HTTP) that asks for a login and then answers
// each request with respond; auth receives the Authorization headers.
func fakeRegistry(t *testing.T, respond func(http.ResponseWriter)) (host string, auth <-chan string) {
	ch := make(chan string, 100)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a := r.Header.Get("Authorization")
		if a == "" {
			w.Header().Set("WWW-Authenticate", `Basic realm="berth-test"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		select {
		case ch <- a:
		default:
		}
		respond(w)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), ch
}

func TestPullSecretReachesKubelet(t *testing.T) {
	e, cs := testExecutor(t, map[string]any{"poll_timeout": "2m"})
	host, auth := fakeRegistry(t, func(w http.ResponseWriter) { w.WriteHeader(http.StatusNotFound) })
	job := credentialJob(t, host)
	login := job.Credentials[0]
	job.Image = sdk.Image{Name: host + "/berth-test/private:1", PullPolicy: []string{PullAlways}}
	job.Timeout = time.Minute
	t.Cleanup(func() { _ = e.Cleanup(context.Background(), sdk.Handle{JobID: job.ID}) })
	_, err := e.Prepare(t.Context(), job)
	if err == nil || !strings.Contains(err.Error(), job.Image.Name) {
		t.Fatalf("Prepare with an image the registry does not have: %v; want an error naming it", err)
	}
	t.Logf("Prepare: %v", err)
	if strings.Contains(err.Error(), login.Password) {
		t.Errorf("the password is in Prepare's error: %v", err)
	}
	// The failed Prepare took its pod and Secret with it.
	podGone(t, cs, "default", podName(job.ID), "after a failed Prepare")
	secretGone(t, cs, "default", pullSecretName(job.ID), "after a failed Prepare")
	select {
	case got := <-auth:
		if want := "Basic " + base64.StdEncoding.EncodeToString([]byte(login.Username+":"+login.Password)); got != want {
			t.Errorf("the registry got Authorization %q; want %q (the job's login)", got, want)
		}
	default:
		t.Skipf("kubelet did not reach the registry at %s (a cluster on another host?); the login it would send is unchecked", host)
	}
}

func TestMissingImageLeavesNoSecret(t *testing.T) {
	e, cs := testExecutor(t, map[string]any{"poll_timeout": "20s"})
	job := credentialJob(t, "registry.berth-test.invalid")
	job.Image = sdk.Image{Name: "berth-test/no-such-image:404", PullPolicy: []string{PullNever}}
	job.Timeout = time.Minute
	t.Cleanup(func() { _ = e.Cleanup(context.Background(), sdk.Handle{JobID: job.ID}) })
	_, err := e.Prepare(t.Context(), job)
	if err == nil || !strings.Contains(err.Error(), job.Image.Name) {
		t.Fatalf("Prepare with a missing image: %v; want an error naming it", err)
	}
	podGone(t, cs, "default", podName(job.ID), "after a failed Prepare")
	secretGone(t, cs, "default", pullSecretName(job.ID), "after a failed Prepare")
}

// TestRefusedPodLeavesNoSecret: the API server refuses the job's pod (a
// ResourceQuota allowing no pods in the namespace): Prepare says why at
// once, and the Secret made before the pod is gone.
func TestRefusedPodLeavesNoSecret(t *testing.T) {
	_, cs := testCluster(t)
	ns := "berth-quota-" + jobID(t)[len(jobID(t))-8:]
	if _, err := cs.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cs.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })
	quota := &corev1.ResourceQuota{ObjectMeta: metav1.ObjectMeta{Name: "no-pods"},
		Spec: corev1.ResourceQuotaSpec{Hard: corev1.ResourceList{corev1.ResourcePods: resource.MustParse("0")}}}
	if _, err := cs.CoreV1().ResourceQuotas(ns).Create(t.Context(), quota, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e, _ := testExecutor(t, map[string]any{"namespace": ns})
	job := credentialJob(t, "registry.berth-test.invalid")
	job.Image.Name = busyboxImage
	job.Timeout = time.Minute
	t.Cleanup(func() { _ = e.Cleanup(context.Background(), sdk.Handle{JobID: job.ID}) })
	// The quota controller fills in the quota's status shortly after it
	// is made; until then the API server refuses pods for that reason.
	_, err := e.Prepare(t.Context(), job)
	if err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Fatalf("Prepare in a namespace allowing no pods: %v; want the API server's refusal", err)
	}
	if strings.Contains(err.Error(), job.Credentials[0].Password) {
		t.Errorf("the password is in the error: %v", err)
	}
	t.Logf("Prepare: %v", err)
	podGone(t, cs, ns, podName(job.ID), "after a refused pod")
	secretGone(t, cs, ns, pullSecretName(job.ID), "after a refused pod")
}

func TestCancelledPrepareLeavesNoSecret(t *testing.T) {
	e, cs := testExecutor(t, map[string]any{"poll_timeout": "2m"})
	// The registry holds the pull until the test ends, so the pod is
	// still pulling, its Secret in place, when the cancel comes.
	release := make(chan struct{})
	host, auth := fakeRegistry(t, func(http.ResponseWriter) { <-release })
	t.Cleanup(func() { close(release) }) // before the server's Close
	job := credentialJob(t, host)
	job.Image = sdk.Image{Name: host + "/berth-test/slow:1", PullPolicy: []string{PullAlways}}
	job.Timeout = time.Minute
	t.Cleanup(func() { _ = e.Cleanup(context.Background(), sdk.Handle{JobID: job.ID}) })
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := e.Prepare(ctx, job)
		done <- err
	}()
	var err error
	select {
	case <-auth:
		if _, gerr := cs.CoreV1().Secrets("default").Get(t.Context(), pullSecretName(job.ID), metav1.GetOptions{}); gerr != nil {
			t.Errorf("the job's Secret while its image is pulled: %v", gerr)
		}
		cancel()
		err = <-done
		if err == nil || !strings.Contains(err.Error(), "stopped while waiting") {
			t.Errorf("a cancelled Prepare: %v; want an error saying it was stopped", err)
		}
	case err = <-done:
		t.Logf("kubelet did not reach the registry at %s (a cluster on another host?), so Prepare failed before the cancel: %v", host, err)
		if err == nil {
			t.Fatal("Prepare of an image no registry has succeeded")
		}
	}
	podGone(t, cs, "default", podName(job.ID), "after a cancelled Prepare")
	secretGone(t, cs, "default", pullSecretName(job.ID), "after a cancelled Prepare")
}

func TestExpiredPullSecretsAreDeleted(t *testing.T) {
	path, cs := testCluster(t)
	runner := "berth-test-sweep-" + jobID(t)[len("testexpiredpullsecretsaredeleted-"):]
	settings := testSettings(path, map[string]any{"runner_name": runner})
	ctx := t.Context()
	now := time.Now()
	// mk makes a Secret of a runner as a job of it would, expiring at exp.
	mk := func(name, runner string, exp time.Time) string {
		t.Helper()
		name = name + "-" + jobID(t)[len("testexpiredpullsecretsaredeleted-"):]
		_, err := cs.CoreV1().Secrets("default").Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{
				Name:        name,
				Labels:      map[string]string{LabelJob: name, LabelRunner: labelValue(runner, 63)},
				Annotations: map[string]string{AnnotationJob: name, AnnotationExpires: strconv.FormatInt(exp.Unix(), 10)},
			},
			Type: corev1.SecretTypeDockerConfigJson,
			Data: map[string][]byte{corev1.DockerConfigJsonKey: []byte(`{"auths":{}}`)},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cs.CoreV1().Secrets("default").Delete(context.Background(), name, metav1.DeleteOptions{}) })
		return name
	}
	expired := mk("berth-expired", runner, now.Add(-time.Hour))
	current := mk("berth-current", runner, now.Add(time.Hour))
	others := mk("berth-others", runner+"-other", now.Add(-time.Hour))
	// And a job of the runner with a login, prepared by a plugin whose
	// clock is 3 hours behind.
	old := New(WithClock(func() time.Time { return time.Now().Add(-3 * time.Hour) }))
	if err := old.Configure(ctx, settings); err != nil {
		t.Fatal(err)
	}
	stale, _ := decodeState(prepare(t, old, credentialJob(t, "registry.berth-test.invalid")))

	if err := New().Configure(ctx, settings); err != nil {
		t.Fatal(err)
	}
	secretGone(t, cs, "default", expired, "of this runner past its expiry, after a new plugin's Configure")
	secretGone(t, cs, "default", stale.Secret, "of a job of this runner past its expiry, after a new plugin's Configure")
	podGone(t, cs, "default", stale.Pod, "of this runner past its expiry, after a new plugin's Configure")
	for _, name := range []string{current, others} {
		if _, err := cs.CoreV1().Secrets("default").Get(ctx, name, metav1.GetOptions{}); err != nil {
			t.Errorf("Secret %s (not expired, or another runner's) after the sweep: %v; want it kept", name, err)
		}
	}
}

func TestPullSecretGoesWithItsPod(t *testing.T) {
	e, cs := testExecutor(t, nil)
	st, _ := decodeState(prepare(t, e, credentialJob(t, "registry.berth-test.invalid")))
	zero := int64(0)
	if err := cs.CoreV1().Pods(st.Namespace).Delete(t.Context(), st.Pod, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	// The garbage collector works on its own time: wait for it, with a
	// bound only so that a cluster without it ends the test.
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	for {
		_, err := cs.CoreV1().Secrets(st.Namespace).Get(ctx, st.Secret, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the Secret of a deleted pod is still there (%v): is the pod not its owner, or the garbage collector not running?", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// TestJobEntrypoint: a job's entrypoint runs first in the build container
// and must run the command it is given; one that does not fails Prepare
// naming it, at once.
func TestJobEntrypoint(t *testing.T) {
	e, _ := testExecutor(t, nil)
	t.Run("runs its command", func(t *testing.T) {
		h := prepare(t, e, sdk.Job{Image: sdk.Image{Name: busyboxImage,
			Entrypoint: []string{"sh", "-c", `echo from-entrypoint >/tmp/ep; exec "$@"`, "--"}}})
		code, stdout, stderr, err := run(t, t.Context(), e, h, "cat /tmp/ep\n")
		if err != nil || code != 0 || stdout != "from-entrypoint\n" {
			t.Errorf("Run = %d, %v; stdout %q, stderr %q; want the entrypoint's file", code, err, stdout, stderr)
		}
	})
	t.Run("ends instead", func(t *testing.T) {
		id := jobID(t)
		t.Cleanup(func() { _ = e.Cleanup(context.Background(), sdk.Handle{JobID: id}) })
		_, err := e.Prepare(t.Context(), sdk.Job{ID: id, Timeout: time.Minute,
			Image: sdk.Image{Name: busyboxImage, Entrypoint: []string{"sh", "-c", "echo no thanks; exit 3"}}})
		if err == nil || !strings.Contains(err.Error(), "entrypoint") {
			t.Fatalf("Prepare with an entrypoint that exits: %v; want an error naming the entrypoint", err)
		}
		t.Logf("Prepare: %v", err)
	})
}
