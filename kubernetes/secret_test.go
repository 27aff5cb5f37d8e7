package kubernetes

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/berthci/berth/internal/syncbuf"
	"github.com/berthci/berth/sdk"
)

// decodeAuths reads a .dockerconfigjson as plain JSON, so that the test
// sees the field names kubelet reads rather than this package's types.
func decodeAuths(t *testing.T, data []byte) map[string]map[string]string {
	t.Helper()
	var doc map[string]map[string]map[string]string
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatalf("the docker config %s: %v", data, err)
	}
	if len(doc) != 1 || doc["auths"] == nil {
		t.Fatalf("the docker config %s has keys other than \"auths\"", data)
	}
	return doc["auths"]
}

func TestDockerConfigJSON(t *testing.T) {
	entry := func(user, pass string) map[string]string {
		return map[string]string{"username": user, "password": pass, "auth": base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))}
	}
	for _, c := range []struct {
		name  string
		creds []sdk.Credential
		want  map[string]map[string]string
	}{
		{name: "one login",
			creds: []sdk.Credential{{Registry: "registry.example.com", Username: "gitlab-ci-token", Password: "glcbt-secret"}},
			want:  map[string]map[string]string{"registry.example.com": entry("gitlab-ci-token", "glcbt-secret")}},
		{name: "two registries",
			creds: []sdk.Credential{{Registry: "registry.example.com:5050", Username: "a", Password: "1"}, {Registry: "https://other.example.com", Username: "b", Password: "2"}},
			want:  map[string]map[string]string{"registry.example.com:5050": entry("a", "1"), "https://other.example.com": entry("b", "2")}},
		{name: "first login of a registry kept",
			creds: []sdk.Credential{{Registry: "r.example.com", Username: "first", Password: "1"}, {Registry: "r.example.com", Username: "second", Password: "2"}},
			want:  map[string]map[string]string{"r.example.com": entry("first", "1")}},
		{name: "no registry is Docker Hub",
			creds: []sdk.Credential{{Username: "hubuser", Password: "hubpass"}},
			want:  map[string]map[string]string{dockerHubKey: entry("hubuser", "hubpass")}},
		{name: "login without user or password skipped",
			creds: []sdk.Credential{{Registry: "empty.example.com"}, {Registry: "r.example.com", Username: "u", Password: "p"}},
			want:  map[string]map[string]string{"r.example.com": entry("u", "p")}},
		{name: "password JSON must escape",
			creds: []sdk.Credential{{Registry: "r.example.com", Username: "u", Password: `p"a\ss<&>wörd:`}},
			want:  map[string]map[string]string{"r.example.com": entry("u", `p"a\ss<&>wörd:`)}},
	} {
		t.Run(c.name, func(t *testing.T) {
			data, err := dockerConfigJSON(c.creds)
			if err != nil {
				t.Fatal(err)
			}
			got := decodeAuths(t, data)
			if fmt.Sprint(got) != fmt.Sprint(c.want) {
				t.Errorf("auths %v; want %v", got, c.want)
			}
		})
	}
}

func TestPullSecret(t *testing.T) {
	cfg, err := decodeSettings(map[string]any{"namespace": "ci", "runner_name": "Runner One", "pod_labels": map[string]any{"team": "build"}})
	if err != nil {
		t.Fatal(err)
	}
	job := sdk.Job{ID: "Job #42/attempt 1", Image: sdk.Image{Name: "busybox"}, Timeout: time.Hour,
		Credentials: []sdk.Credential{{Registry: "registry.example.com", Username: "u", Password: "p"}}}
	pod, err := podSpec(cfg, job, time.Unix(1_800_000_000, 0))
	if err != nil {
		t.Fatal(err)
	}
	s, err := pullSecret(pod, job)
	if err != nil || s == nil {
		t.Fatalf("pullSecret = %v, %v", s, err)
	}
	if s.Name != pod.Name+pullSecretSuffix || s.Name != pullSecretName(job.ID) || len(validation.IsDNS1123Subdomain(s.Name)) > 0 {
		t.Errorf("Secret name %q for pod %q", s.Name, pod.Name)
	}
	if s.Namespace != "ci" || s.Type != corev1.SecretTypeDockerConfigJson || len(s.Data) != 1 {
		t.Errorf("Secret %s/%s of type %s with %d keys", s.Namespace, s.Name, s.Type, len(s.Data))
	}
	wantLabels := map[string]string{LabelJob: pod.Labels[LabelJob], LabelRunner: pod.Labels[LabelRunner]}
	if fmt.Sprint(s.Labels) != fmt.Sprint(wantLabels) {
		t.Errorf("labels %v; want the pod's job and runner labels %v", s.Labels, wantLabels)
	}
	wantAnn := map[string]string{AnnotationJob: job.ID, AnnotationExpires: "1800007200"}
	if fmt.Sprint(s.Annotations) != fmt.Sprint(wantAnn) {
		t.Errorf("annotations %v; want %v", s.Annotations, wantAnn)
	}
	if a := decodeAuths(t, s.Data[corev1.DockerConfigJsonKey]); a["registry.example.com"]["password"] != "p" {
		t.Errorf("auths %v", a)
	}
	if s, err := pullSecret(pod, sdk.Job{ID: job.ID}); s != nil || err != nil {
		t.Errorf("pullSecret for a job without logins = %v, %v; want none", s, err)
	}
}

func TestRedact(t *testing.T) {
	creds := []sdk.Credential{{Registry: "r.example.com", Username: "user", Password: `pa"ss<word`}}
	data, err := dockerConfigJSON(creds)
	if err != nil {
		t.Fatal(err)
	}
	s := &corev1.Secret{Data: map[string][]byte{corev1.DockerConfigJsonKey: data}}
	cause := apierrors.NewInvalid(schema.GroupKind{Kind: "Secret"}, "x", field.ErrorList{field.Invalid(field.NewPath("data"), string(data), "refused: "+base64.StdEncoding.EncodeToString(data)+" / "+creds[0].Password)})
	err = redact(fmt.Errorf("creating it: %w", cause), secretTexts(s)...)
	for _, leak := range []string{creds[0].Password, `pa\"ss\u003cword`, basicAuth(creds[0]), base64.StdEncoding.EncodeToString(data)} {
		if strings.Contains(err.Error(), leak) {
			t.Errorf("%q in the error: %v", leak, err)
		}
	}
	if !strings.Contains(err.Error(), "[redacted]") || !strings.Contains(err.Error(), "creating it") {
		t.Errorf("redacted error: %v", err)
	}
	if !apierrors.IsInvalid(err) {
		t.Error("the redacted error is no longer the API server's Invalid")
	}
	if redact(nil, "x") != nil {
		t.Error("redact(nil) is not nil")
	}
}

// fakeExecutor is an executor talking to a fake clientset whose pods run
// as soon as they are created, logging to logs. A fake stands only where a
// real API server cannot be made to do what the test needs: show the order
// of the calls, or refuse a Secret quoting its data back (a webhook's
// doing). The same paths run against the real cluster in
// TestPullSecretLifecycle, TestRefusedPodLeavesNoSecret and the others of
// cluster_test.go.
func fakeExecutor(t *testing.T, raw map[string]any, logs *syncbuf.Buffer) (*Executor, *fake.Clientset) {
	t.Helper()
	cfg, err := decodeSettings(raw)
	if err != nil {
		t.Fatal(err)
	}
	cs := fake.NewClientset()
	uids := 0
	cs.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		p := a.(k8stesting.CreateAction).GetObject().(*corev1.Pod)
		uids++
		p.UID = types.UID(fmt.Sprintf("pod-uid-%d", uids))
		for _, c := range p.Spec.Containers {
			p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, corev1.ContainerStatus{Name: c.Name, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}})
		}
		return false, nil, nil // the tracker stores it
	})
	e := New(WithLogger(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	e.cfg, e.client = cfg, &cluster{cs: cs, describe: "the fake API server"}
	return e, cs
}

func TestPullSecretWithFakeCluster(t *testing.T) {
	const password = "fake-cluster-password-81c2"
	job := sdk.Job{ID: "fake-1", Image: sdk.Image{Name: "busybox"}, Timeout: time.Hour,
		Credentials: []sdk.Credential{{Registry: "registry.example.com", Username: "u", Password: password}}}
	name := pullSecretName(job.ID)
	var logs syncbuf.Buffer
	e, cs := fakeExecutor(t, map[string]any{"namespace": "ci"}, &logs)
	// A Secret an earlier attempt left, owned by that attempt's pod.
	_, err := cs.CoreV1().Secrets("ci").Create(t.Context(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{
		Name: name, Namespace: "ci", UID: "old-secret",
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: podName(job.ID), UID: "old-pod"}},
	}, Data: map[string][]byte{corev1.DockerConfigJsonKey: []byte(`{"auths":{}}`)}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	h, err := e.Prepare(t.Context(), job)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(h.State), password) {
		t.Errorf("the password is in the handle: %s", h.State)
	}
	st, err := decodeState(h)
	if err != nil || st.Secret != name {
		t.Fatalf("state %+v, %v; want it to name Secret %s", st, err, name)
	}
	// The Secret was made before the pod, so that kubelet has it at the
	// first pull.
	var order []string
	for _, a := range cs.Actions() {
		if a.GetVerb() == "create" {
			order = append(order, a.GetResource().Resource)
		}
	}
	// The test's, Prepare's refused one (it exists), Prepare's replacement.
	if strings.Join(order, ",") != "secrets,secrets,secrets,pods" {
		t.Errorf("creations %v; want the Secret replaced before the pod is made", order)
	}
	s, err := cs.CoreV1().Secrets("ci").Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if a := decodeAuths(t, s.Data[corev1.DockerConfigJsonKey]); a["registry.example.com"]["password"] != password {
		t.Errorf("the earlier attempt's Secret was kept: auths %v", a)
	}
	if len(s.OwnerReferences) != 1 || s.OwnerReferences[0].UID != "pod-uid-1" || s.OwnerReferences[0].Kind != "Pod" || s.OwnerReferences[0].Name != st.Pod {
		t.Errorf("owners %+v; want only the job's pod", s.OwnerReferences)
	}

	// A plugin process that did not prepare the job cleans up from the
	// handle alone.
	fresh, _ := fakeExecutor(t, map[string]any{"namespace": "ci"}, &logs)
	fresh.client = e.client
	for range 2 {
		if err := fresh.Cleanup(t.Context(), h); err != nil {
			t.Fatalf("Cleanup: %v", err)
		}
	}
	if _, err := cs.CoreV1().Secrets("ci").Get(t.Context(), name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the Secret after Cleanup: %v; want it deleted", err)
	}
	if strings.Contains(logs.String(), password) {
		t.Errorf("the password is in the log: %s", logs.String())
	}
}

func TestFailedPrepareHidesAndDeletesTheSecret(t *testing.T) {
	const password = "fake-cluster-password-3d9e"
	job := sdk.Job{ID: "fake-2", Image: sdk.Image{Name: "busybox"}, Timeout: time.Hour,
		Credentials: []sdk.Credential{{Registry: "registry.example.com", Username: "u", Password: password}}}
	for _, c := range []struct {
		name     string
		resource string // whose creation fails
		// cause is the API server's error; it quotes what it was sent.
		cause func(obj runtime.Object) error
		want  string
	}{
		{name: "the Secret is refused", resource: "secrets", cause: func(obj runtime.Object) error {
			text, _ := json.Marshal(obj) // the data in base64
			data := obj.(*corev1.Secret).Data[corev1.DockerConfigJsonKey]
			return apierrors.NewBadRequest("a webhook refused " + string(text) + " holding " + string(data))
		}, want: "creating registry Secret ci/" + pullSecretName(job.ID)},
	} {
		t.Run(c.name, func(t *testing.T) {
			var logs syncbuf.Buffer
			e, cs := fakeExecutor(t, map[string]any{"namespace": "ci"}, &logs)
			cs.PrependReactor("create", c.resource, func(a k8stesting.Action) (bool, runtime.Object, error) {
				return true, nil, c.cause(a.(k8stesting.CreateAction).GetObject())
			})
			_, err := e.Prepare(t.Context(), job)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Prepare = %v; want an error containing %q", err, c.want)
			}
			data, _ := dockerConfigJSON(job.Credentials)
			for _, leak := range []string{password, basicAuth(job.Credentials[0]), base64.StdEncoding.EncodeToString(data)} {
				if strings.Contains(err.Error(), leak) || strings.Contains(logs.String(), leak) {
					t.Errorf("%q in the error (%v) or the log (%s)", leak, err, logs.String())
				}
			}
			if list, err := cs.CoreV1().Secrets("ci").List(t.Context(), metav1.ListOptions{}); err != nil || len(list.Items) != 0 {
				t.Errorf("Secrets after a failed Prepare: %v, %v; want none", list, err)
			}
		})
	}
}
