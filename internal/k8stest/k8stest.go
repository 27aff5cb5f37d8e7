// Package k8stest finds the Kubernetes cluster that tests run against:
// the one $KUBECONFIG names (test/k8s/cluster.sh's, in CI).
package k8stest

import (
	"os"
	"testing"
	"time"

	k8s "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// Hint says how to get a cluster, for skip messages.
const Hint = "start the test cluster: test/k8s/cluster.sh up (needs BUILD), then export KUBECONFIG=$BUILD/cluster/admin.kubeconfig"

// Cluster returns the kubeconfig's path and a client for the cluster at
// $KUBECONFIG, or skips t, saying why, when none answers.
func Cluster(t testing.TB) (string, k8s.Interface) {
	t.Helper()
	path := os.Getenv("KUBECONFIG")
	if path == "" {
		t.Skip("KUBECONFIG is not set: " + Hint)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Skipf("no cluster configuration at %s (%v): %s", path, err, Hint)
	}
	rc.Timeout = 20 * time.Second
	cs, err := k8s.NewForConfig(rc)
	if err != nil {
		t.Skipf("no client for %s (%v): %s", rc.Host, err, Hint)
	}
	if _, err := cs.Discovery().ServerVersion(); err != nil {
		t.Skipf("no cluster answers at %s (%v): %s", rc.Host, err, Hint)
	}
	return path, cs
}
