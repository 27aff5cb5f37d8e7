# shellcheck shell=bash
# Sourced by .ci/run (bash, set -euo pipefail, as root, Debian 12, with Go).
#
# Brings up what the kubernetes executor's tests need: a real single-node
# cluster (test/k8s/cluster.sh) from the Kubernetes binaries cached in
# $BERTH_K8S_BUILD (default /var/cache/berth-test/k8s), with its busybox
# images imported (no registry). Exports KUBECONFIG, which the tests read;
# without it they skip.
#
# The binaries take 20-30 minutes to build cold: the first run on a machine
# pays it, later runs reuse the cache. BERTH_CI_K8S_BUILD=0 skips the build
# (the cluster tests then skip with a message); BERTH_CI_K8S=0 skips the
# cluster altogether.
#
# Idempotent: a second run finds the cluster running and starts nothing.
# The cluster's processes log to $BERTH_K8S_BUILD/cluster/log; stop them
# with: BUILD=$BERTH_K8S_BUILD test/k8s/cluster.sh down

berth_k8s_setup() {
  local build=${BERTH_K8S_BUILD:-/var/cache/berth-test/k8s}
  if [ "${BERTH_CI_K8S:-1}" = 0 ]; then
    echo "setup-k8s: skipped (BERTH_CI_K8S=0); the kubernetes executor's and deploy/kubernetes' cluster tests will skip"
    return 0
  fi
  local script=test/k8s/cluster.sh pkgs=() p b missing=0
  for b in kube-apiserver kubelet kube-scheduler kube-controller-manager kubectl; do
    [ -x "$build/bin/$b" ] || missing=1
  done
  if [ "$missing" = 1 ] && [ "${BERTH_CI_K8S_BUILD:-1}" = 0 ]; then
    echo "setup-k8s: no Kubernetes binaries in $build/bin and BERTH_CI_K8S_BUILD=0; the cluster tests will skip"
    return 0
  fi
  for p in containerd runc etcd-server containernetworking-plugins openssl busybox-static gcc libc6-dev curl bc iproute2 iptables ca-certificates; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || pkgs+=("$p")
  done
  if [ ${#pkgs[@]} -gt 0 ]; then
    berth_apt_install setup-k8s "${pkgs[@]}"
  fi
  if [ "$missing" = 1 ]; then
    echo "setup-k8s: building the Kubernetes binaries into $build/bin (log: $build/build.log)"
    mkdir -p "$build"
    BUILD=$build bash "$script" build >"$build/build.log" 2>&1 || {
      echo "setup-k8s: the build failed; last lines of $build/build.log:" >&2
      tail -n 20 "$build/build.log" >&2
      return 1
    }
  fi
  # `up` starts only what is not running, and re-applies what a cluster
  # started by an older script may lack (the pod bridge, the API service NAT,
  # the images).
  echo "setup-k8s: bringing the test cluster up (logs: $build/cluster/log)"
  BUILD=$build bash "$script" up || {
    echo "setup-k8s: the cluster did not come up; see $build/cluster/log" >&2
    return 1
  }
  export KUBECONFIG=$build/cluster/admin.kubeconfig
  echo "setup-k8s: cluster up, KUBECONFIG=$KUBECONFIG"
}

berth_k8s_setup
unset -f berth_k8s_setup
