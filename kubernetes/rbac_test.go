package kubernetes

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	yamlutil "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/berthci/berth/sdk"
)

// deployedRules are the rules of the Role berth is deployed with.
func deployedRules(t *testing.T) []rbacv1.PolicyRule {
	t.Helper()
	f, err := os.Open("../deploy/kubernetes/10-rbac.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := yamlutil.NewYAMLOrJSONDecoder(f, 4096)
	for {
		var role rbacv1.Role
		if err := dec.Decode(&role); errors.Is(err, io.EOF) {
			t.Fatal("deploy/kubernetes/10-rbac.yaml has no Role")
		} else if err != nil {
			t.Fatalf("deploy/kubernetes/10-rbac.yaml: %v", err)
		}
		if role.Kind == "Role" {
			return role.Rules
		}
	}
}

// serviceAccountExecutor makes a ServiceAccount in the default namespace,
// a Role there with berth's deployed rules (not bound yet), and an
// executor that uses only the account's token; bind binds the Role.
func serviceAccountExecutor(t *testing.T) (e *Executor, bind func()) {
	t.Helper()
	path, cs := testCluster(t)
	ctx := t.Context()
	name := jobID(t)
	const ns = "default"
	del := func(what string, f func(context.Context) error) {
		t.Cleanup(func() {
			if err := f(context.Background()); err != nil {
				t.Errorf("deleting the test's %s: %v", what, err)
			}
		})
	}
	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	del("ServiceAccount", func(ctx context.Context) error {
		return cs.CoreV1().ServiceAccounts(ns).Delete(ctx, name, metav1.DeleteOptions{})
	})
	if _, err := cs.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: deployedRules(t)}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	del("Role", func(ctx context.Context) error {
		return cs.RbacV1().Roles(ns).Delete(ctx, name, metav1.DeleteOptions{})
	})
	tok, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authv1.TokenRequest{Spec: authv1.TokenRequestSpec{ExpirationSeconds: new(int64(600))}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	admin, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	ca := admin.TLSClientConfig.CAData
	if len(ca) == 0 && admin.TLSClientConfig.CAFile != "" {
		if ca, err = os.ReadFile(admin.TLSClientConfig.CAFile); err != nil {
			t.Fatal(err)
		}
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: admin.Host, CertificateAuthorityData: ca}
	cfg.AuthInfos["sa"] = &clientcmdapi.AuthInfo{Token: tok.Status.Token}
	cfg.Contexts["sa"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "sa", Namespace: ns}
	cfg.CurrentContext = "sa"
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, kubeconfig); err != nil {
		t.Fatal(err)
	}
	e = New()
	if err := e.Configure(ctx, testSettings(kubeconfig, nil)); err != nil {
		t.Fatal(err)
	}
	bind = func() {
		rb := &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: name, Namespace: ns}},
		}
		if _, err := cs.RbacV1().RoleBindings(ns).Create(context.Background(), rb, metav1.CreateOptions{}); err != nil {
			t.Error(err)
			return
		}
		del("RoleBinding", func(ctx context.Context) error {
			return cs.RbacV1().RoleBindings(ns).Delete(ctx, name, metav1.DeleteOptions{})
		})
	}
	return e, bind
}

// TestRoleBindingMadeDuringPrepare: a Prepare refused by the authorizer
// (the RoleBinding is not there yet, as right after an installation)
// succeeds once the binding is made, and the job runs with the account's
// token only.
func TestRoleBindingMadeDuringPrepare(t *testing.T) {
	e, bind := serviceAccountExecutor(t)
	job := sdk.Job{ID: jobID(t), Image: sdk.Image{Name: busyboxImage}, Timeout: 10 * time.Minute}
	type prepared struct {
		h   sdk.Handle
		err error
	}
	done := make(chan prepared, 1)
	go func() {
		h, err := e.Prepare(t.Context(), job)
		done <- prepared{h, err}
	}()
	// Not a timing assertion: the binding comes after the first refusals.
	select {
	case p := <-done:
		t.Fatalf("Prepare ended before the RoleBinding was made: %v", p.err)
	case <-time.After(2 * time.Second):
	}
	bind()
	p := <-done
	t.Cleanup(func() {
		if err := e.Cleanup(context.Background(), sdk.Handle{JobID: job.ID}); err != nil {
			t.Errorf("Cleanup: %v", err)
		}
	})
	if p.err != nil {
		t.Fatalf("Prepare with the RoleBinding made 2 s into it: %v", p.err)
	}
	var stdout bytes.Buffer
	code, err := e.Run(t.Context(), p.h, sdk.Step{Name: "script", Shell: "sh", Script: "echo hello\n"}, sdk.Output{Stdout: &stdout, Stderr: io.Discard})
	if err != nil || code != 0 || stdout.String() != "hello\n" {
		t.Errorf("Run: %d, %v, stdout %q; want hello", code, err, stdout.String())
	}
}

// TestMissingRoleBindingIsNamed: without the binding, Prepare fails
// saying what the service account needs.
func TestMissingRoleBindingIsNamed(t *testing.T) {
	e, _ := serviceAccountExecutor(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	_, err := e.Prepare(ctx, sdk.Job{ID: jobID(t), Image: sdk.Image{Name: busyboxImage}, Timeout: 10 * time.Minute})
	if err == nil || !strings.Contains(err.Error(), "forbidden") || !strings.Contains(err.Error(), rbacHint) {
		t.Errorf("Prepare without a RoleBinding: %v; want forbidden and %q", err, rbacHint)
	}
}
