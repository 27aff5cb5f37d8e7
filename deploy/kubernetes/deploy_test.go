// Package deploy tests the manifests of this folder: berth deployed into a
// real cluster by them runs a job through the kubernetes executor with
// nothing but its service account.
package deploy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	yamlutil "k8s.io/apimachinery/pkg/util/yaml"
	k8s "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/berthci/berth/host/gitlab/gitlabtest"
	"github.com/berthci/berth/internal/k8stest"
)

const (
	runnerNS = "berth"
	jobsNS   = "berth-jobs"
	// jobImage is one of the images test/k8s/cluster.sh imports.
	jobImage = "busybox:local"
)

// cluster returns an admin client for the test cluster, or skips.
func cluster(t *testing.T) k8s.Interface {
	_, cs := k8stest.Cluster(t)
	return cs
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// script runs one of the project's scripts and returns its stdout.
func script(t *testing.T, root string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), "bash", args...)
	cmd.Dir = root
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s: %w\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// manifests decodes every object of this folder's YAML files, in file order.
func manifests(t *testing.T) []runtime.Object {
	t.Helper()
	files, err := filepath.Glob("*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests here (%v)", err)
	}
	slices.Sort(files)
	var objs []runtime.Object
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		r := yamlutil.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
		for {
			doc, err := r.Read()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if len(bytes.TrimSpace(doc)) == 0 {
				continue
			}
			obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			objs = append(objs, obj)
		}
	}
	return objs
}

// TestBerthInCluster deploys berth with this folder's manifests (its image
// built by build-image.sh and imported into the test cluster's containerd,
// the config Secret pointed at a test coordinator) and has it run a job.
//
// The coordinator listens on the pod bridge's address of the test cluster
// (test/k8s/cluster.sh gateway), a network the cluster script made for its
// pods: pods cannot reach the host's loopback.
func TestBerthInCluster(t *testing.T) {
	cs := cluster(t)
	root := repoRoot(t)
	out, err := script(t, root, "test/k8s/cluster.sh", "gateway")
	if err != nil {
		t.Fatal(err)
	}
	gateway := strings.TrimSpace(out)
	if ln, err := net.Listen("tcp", net.JoinHostPort(gateway, "0")); err != nil {
		t.Skipf("the pod bridge address %s is not on this machine (%v): %s", gateway, err, k8stest.Hint)
	} else {
		ln.Close()
	}
	ctx := t.Context()

	// The image, as a user builds it, imported as a node would pull it.
	// One tag for every run: a new import replaces the image, so runs
	// do not pile images up in the cluster's containerd.
	tag := "berth:deploy-test"
	archive := filepath.Join(t.TempDir(), "berth-image.tar")
	if _, err := script(t, root, "deploy/kubernetes/build-image.sh", archive, tag); err != nil {
		t.Fatalf("building the image: %v", err)
	}
	if _, err := script(t, root, "test/k8s/cluster.sh", "import", archive); err != nil {
		t.Skipf("cannot import the image into the cluster's containerd (is it test/k8s/cluster.sh's cluster?): %v", err)
	}

	coord := gitlabtest.NewAt(t, net.JoinHostPort(gateway, "0"))
	token := coord.AddRunner()
	repo := coord.CreateRepo("group/project", map[string]string{"README.md": "sources fetched by berth in a pod\n"})
	sha := strings.TrimSpace(gitlabtest.Git(t, repo.Work, "rev-parse", "HEAD"))
	jobID := coord.AddJob(gitlabtest.JobSpec{Name: "in-cluster", Repo: repo.Path, SHA: sha, Script: []string{
		"cat README.md", `echo "job pod: $HOSTNAME"`,
	}})

	waitNamespacesGone(t, cs)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("berth's log:\n%s", berthLog(cs))
		}
		for _, ns := range []string{runnerNS, jobsNS} {
			_ = cs.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{})
		}
	})
	config := fmt.Sprintf(`concurrent = 2
check_interval = 1
shutdown_timeout = 20
log_level = "debug"

[[runners]]
  name = "in-cluster"
  url = %q
  token = %q
  executor = "kubernetes"
  [runners.kubernetes]
    namespace = %q
    image = %q
    pull_policy = "never"
`, coord.URL, token, jobsNS, jobImage)
	deploy(t, ctx, cs, manifests(t), tag, config)

	// The job: taken, run in a pod of berth-jobs, reported.
	deadline := time.Now().Add(4 * time.Minute)
	for coord.Job(jobID).Final == nil {
		if time.Now().After(deadline) {
			t.Fatalf("the job has no final state after 4 min; berth pod: %s", berthPodState(cs))
		}
		if msg := berthPodBroken(cs); msg != "" {
			t.Fatalf("berth's pod does not run: %s", msg)
		}
		time.Sleep(500 * time.Millisecond)
	}
	j := coord.Job(jobID)
	if j.Final.State != "success" {
		t.Fatalf("job %s: %+v\n%s", j.Final.State, j.Final, j.Trace)
	}
	for _, want := range []string{"sources fetched by berth in a pod", "job pod: berth-"} {
		if !bytes.Contains(j.Trace, []byte(want)) {
			t.Errorf("the trace lacks %q:\n%s", want, j.Trace)
		}
	}
	// Cleanup deleted the job's pod (the API is the judge).
	for {
		pods, err := cs.CoreV1().Pods(jobsNS).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(pods.Items) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d pods left in %s after the job, e.g. %s", len(pods.Items), jobsNS, pods.Items[0].Name)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// TestServiceAccountIsLeastPrivilege checks the Role of the manifests as
// the API server's authorizer sees it: berth may work job pods in the job
// namespace and nothing else.
func TestServiceAccountIsLeastPrivilege(t *testing.T) {
	cs := cluster(t)
	ctx := t.Context()
	waitNamespacesGone(t, cs)
	t.Cleanup(func() {
		for _, ns := range []string{runnerNS, jobsNS} {
			_ = cs.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{})
		}
	})
	var objs []runtime.Object
	for _, o := range manifests(t) {
		switch o.(type) {
		case *corev1.Namespace, *corev1.ServiceAccount, *rbacv1.Role, *rbacv1.RoleBinding:
			objs = append(objs, o)
		}
	}
	deploy(t, ctx, cs, objs, "", "")
	tests := []struct {
		ns, verb, resource, sub string
		allowed                 bool
	}{
		{jobsNS, "create", "pods", "", true},
		{jobsNS, "delete", "pods", "", true},
		{jobsNS, "watch", "pods", "", true},
		{jobsNS, "create", "pods", "exec", true},
		{jobsNS, "get", "pods", "exec", true},
		{jobsNS, "create", "pods", "attach", true},
		{jobsNS, "get", "pods", "log", true},
		{jobsNS, "create", "secrets", "", true},
		{jobsNS, "delete", "secrets", "", true},
		{jobsNS, "list", "events", "", true},
		{jobsNS, "create", "events", "", false},
		{jobsNS, "create", "deployments", "", false},
		{jobsNS, "create", "pods", "portforward", false},
		{jobsNS, "create", "serviceaccounts", "token", false},
		{runnerNS, "get", "secrets", "", false},
		{runnerNS, "create", "pods", "", false},
		{runnerNS, "create", "pods", "exec", false},
		{"default", "list", "pods", "", false},
		{"kube-system", "get", "secrets", "", false},
		{"", "list", "nodes", "", false},
		{"", "create", "namespaces", "", false},
	}
	for _, tt := range tests {
		name := fmt.Sprintf("%s %s/%s in %q", tt.verb, tt.resource, tt.sub, tt.ns)
		t.Run(name, func(t *testing.T) {
			got, err := askAccess(ctx, cs, tt.ns, tt.verb, tt.resource, tt.sub)
			if err != nil {
				t.Fatal(err)
			}
			if got.Status.Allowed != tt.allowed {
				t.Errorf("allowed = %v, want %v (%s)", got.Status.Allowed, tt.allowed, got.Status.Reason)
			}
		})
	}
}

// askAccess asks the API server's authorizer whether berth's service
// account may do verb on resource/sub in ns.
func askAccess(ctx context.Context, cs k8s.Interface, ns, verb, resource, sub string) (*authzv1.SubjectAccessReview, error) {
	review := &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
		User:   "system:serviceaccount:" + runnerNS + ":berth",
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + runnerNS, "system:authenticated"},
		ResourceAttributes: &authzv1.ResourceAttributes{
			Namespace: ns, Verb: verb, Resource: resource, Subresource: sub,
		},
	}}
	if resource == "deployments" {
		review.Spec.ResourceAttributes.Group = "apps"
	}
	return cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, review, metav1.CreateOptions{})
}

// awaitBinding waits until the authorizer, which reads Roles from a cache,
// knows the new RoleBinding: until then berth's first job would be
// refused, and the answers below would be stale.
func awaitBinding(t *testing.T, ctx context.Context, cs k8s.Interface) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		got, err := askAccess(ctx, cs, jobsNS, "create", "pods", "")
		if err != nil {
			t.Fatal(err)
		}
		if got.Status.Allowed {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the API server's authorizer does not know the RoleBinding after a minute: %s", got.Status.Reason)
		}
	}
}

// deploy creates the objects as `kubectl apply -f deploy/kubernetes`
// would on an empty cluster, with two changes a user makes too: the image
// (when tag is set) and config.toml (when config is set).
func deploy(t *testing.T, ctx context.Context, cs k8s.Interface, objs []runtime.Object, tag, config string) {
	t.Helper()
	for _, o := range objs {
		var err error
		switch o := o.(type) {
		case *corev1.Namespace:
			_, err = cs.CoreV1().Namespaces().Create(ctx, o, metav1.CreateOptions{})
		case *corev1.ServiceAccount:
			_, err = cs.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.Role:
			_, err = cs.RbacV1().Roles(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.RoleBinding:
			if _, err = cs.RbacV1().RoleBindings(o.Namespace).Create(ctx, o, metav1.CreateOptions{}); err == nil {
				awaitBinding(t, ctx, cs)
			}
		case *corev1.Secret:
			if _, ok := o.StringData["config.toml"]; !ok {
				t.Fatalf("Secret %s has no config.toml", o.Name)
			}
			if config != "" {
				o.StringData["config.toml"] = config
			}
			_, err = cs.CoreV1().Secrets(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *appsv1.Deployment:
			c := &o.Spec.Template.Spec.Containers[0]
			for _, e := range c.Env {
				if e.Name == "KUBECONFIG" {
					t.Fatalf("the Deployment sets KUBECONFIG; berth must use its service account")
				}
			}
			if tag != "" {
				c.Image, c.ImagePullPolicy = tag, corev1.PullNever
			}
			_, err = cs.AppsV1().Deployments(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		default:
			t.Fatalf("the manifests hold a %T this test does not know", o)
		}
		if err != nil {
			t.Fatalf("creating %T: %v", o, err)
		}
	}
}

// waitNamespacesGone waits until the namespaces of the manifests are gone
// (an earlier run may have left them terminating).
func waitNamespacesGone(t *testing.T, cs k8s.Interface) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for _, ns := range []string{runnerNS, jobsNS} {
		_ = cs.CoreV1().Namespaces().Delete(t.Context(), ns, metav1.DeleteOptions{})
		for {
			_, err := cs.CoreV1().Namespaces().Get(t.Context(), ns, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("namespace %s is still there after 3 min (%v)", ns, err)
			}
			time.Sleep(time.Second)
		}
	}
}

func berthPods(cs k8s.Interface) []corev1.Pod {
	pods, err := cs.CoreV1().Pods(runnerNS).List(context.Background(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=berth"})
	if err != nil {
		return nil
	}
	return pods.Items
}

// berthPodBroken says why berth's pod will not run, or "".
func berthPodBroken(cs k8s.Interface) string {
	for _, p := range berthPods(cs) {
		for _, c := range p.Status.ContainerStatuses {
			if w := c.State.Waiting; w != nil && (w.Reason == "CrashLoopBackOff" || strings.HasPrefix(w.Reason, "Err") || strings.HasSuffix(w.Reason, "Error")) {
				return fmt.Sprintf("%s: %s; log:\n%s", w.Reason, w.Message, berthLog(cs))
			}
			if term := c.LastTerminationState.Terminated; term != nil {
				return fmt.Sprintf("berth exited %d (%s); log:\n%s", term.ExitCode, term.Reason, berthLog(cs))
			}
		}
	}
	return ""
}

func berthPodState(cs k8s.Interface) string {
	var b strings.Builder
	for _, p := range berthPods(cs) {
		fmt.Fprintf(&b, "%s %s %+v; ", p.Name, p.Status.Phase, p.Status.ContainerStatuses)
	}
	return b.String()
}

func berthLog(cs k8s.Interface) string {
	var b strings.Builder
	for _, p := range berthPods(cs) {
		for _, previous := range []bool{true, false} {
			data, err := cs.CoreV1().Pods(runnerNS).GetLogs(p.Name, &corev1.PodLogOptions{Previous: previous}).Do(context.Background()).Raw()
			if err == nil && len(data) > 0 {
				fmt.Fprintf(&b, "--- %s (previous=%v)\n%s", p.Name, previous, data)
			}
		}
	}
	return b.String()
}
