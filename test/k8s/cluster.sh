#!/bin/bash
# A real single-node Kubernetes cluster for the kubernetes executor's tests.
#
#   test/k8s/cluster.sh build    build kube-apiserver, kubelet, kube-scheduler,
#                                kube-controller-manager and kubectl into $BUILD/bin
#                                (once: about 20-30 min cold, under a minute warm)
#   test/k8s/cluster.sh up       start the cluster (idempotent) and wait for the node
#   test/k8s/cluster.sh status   exit 0 when the cluster answers
#   test/k8s/cluster.sh down     stop what `up` started and remove its state
#   test/k8s/cluster.sh import F…  import image archives (docker-archive or OCI
#                                tar) into the cluster's containerd
#   test/k8s/cluster.sh gateway  print the address at which pods reach this
#                                host (the pod bridge's own address)
#
# After `up`: export KUBECONFIG=$BUILD/cluster/admin.kubeconfig
#
# The cluster: Debian's etcd (on 127.0.0.1:12379, away from the usual ports),
# Kubernetes $K8S_VERSION built from the Go module proxy, a containerd
# instance of its own (socket /run/k8s-containerd/containerd.sock; a docker
# daemon on the machine keeps its own), bridge CNI on 10.244.0.0/24, no
# kube-proxy and no DNS (the executor needs neither); in their place one NAT
# rule sends the `kubernetes` service's address to the API server, so that
# pods using the in-cluster configuration reach it. No registry: the
# images busybox:local (Debian's busybox-static), busybox-bash:local (plus
# bash and its libraries) and busybox-notar:local (bash as sh, no tar) are
# built here and imported into containerd.
#
# Debian packages: containerd runc etcd-server containernetworking-plugins
# openssl busybox-static gcc libc6-dev curl bc iproute2 iptables (and Go >= 1.26).
#
# Facts this script relies on (found on Debian 12 without systemd, cgroup v1):
#   - root may lack CAP_SYS_RESOURCE, so runc cannot lower oom_score_adj:
#     containerd's CRI needs restrict_oom_score_adj = true;
#   - kubelet >= 1.35 refuses cgroup v1 unless failCgroupV1: false; no
#     systemd, so the cgroupfs driver on both sides;
#   - kubelet rewrites some kernel sysctls: `up` saves them, `down` restores;
#   - kube-apiserver does not stop on SIGTERM once etcd is gone: stop in
#     order, with SIGKILL after 20 s;
#   - kubelet garbage-collects images it cannot pull back: image GC is off.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.37.2}
BUILD=${BUILD:-/var/cache/berth-test/k8s}
BIN=${BIN:-$BUILD/bin}
BASE=${BASE:-$BUILD/cluster}
NODE=${NODE:-$(hostname)}
KUBECTL=${KUBECTL:-$BIN/kubectl}
CONTAINERD=${CONTAINERD:-containerd}
SOCK=/run/k8s-containerd/containerd.sock
RUNDIR=/run/k8s-containerd
SERVICE_CIDR=10.96.0.0/16
POD_CIDR=10.244.0.0/24
BRIDGE=k8stest0
GATEWAY=10.244.0.1
API_SERVICE_IP=10.96.0.1
NAT_CHAIN=BERTH-K8S-SVC
PAUSE=registry.k8s.io/pause:3.10
SYSCTLS="vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops"
COMPONENTS="kube-apiserver kubelet kube-scheduler kube-controller-manager kubectl"
export KUBECONFIG=$BASE/admin.kubeconfig
REPO=$(cd "$(dirname "$0")/../.." && pwd)

say() { printf '[%s] cluster.sh: %s\n' "$(date +%T)" "$*" >&2; }
die() { say "$*"; exit 1; }

node_ip() {
  local ip=${NODE_IP:-}
  [ -n "$ip" ] || ip=$(ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p')
  [ -n "$ip" ] || ip=$(hostname -I 2>/dev/null | cut -d' ' -f1)
  case $ip in '' | 127.*) die "no non-loopback IPv4 address for the node (kubelet refuses loopback); set NODE_IP" ;; esac
  echo "$ip"
}

ctr_bin() {
  local d; d=$(dirname "$(command -v "$CONTAINERD")")
  if [ -x "$d/ctr" ]; then echo "$d/ctr"; else echo ctr; fi
}

# ---- build ---------------------------------------------------------------

build() {
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local staging="v0.${K8S_VERSION#v1.}" mod=$BUILD/mod-$K8S_VERSION
  mkdir -p "$mod" "$BIN"
  cd "$mod"
  export GOFLAGS=-modcacherw CGO_ENABLED=0
  go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >/dev/null
  local kmod; kmod=$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$K8S_VERSION.mod
  # k8s.io/kubernetes replaces its staging modules with ./staging; point each
  # at its published twin. Those never published (sample-*) are not needed.
  # The checks run outside this module, whose go.mod is being rewritten.
  local replaces="" m
  for m in $(awk '$2 == "=>" && $3 ~ /^\.\/staging/ {print $1}' "$kmod"); do
    if (cd / && GOWORK=off go list -m "$m@$staging" >/dev/null 2>&1); then
      replaces+=$'\t'"$m => $m $staging"$'\n'
    fi
  done
  {
    echo "module berthk8sbuild"
    echo
    echo "go $(awk '$1 == "go" {print $2; exit}' "$kmod")"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    printf '%s' "$replaces"
    echo ")"
  } >go.mod
  {
    echo "//go:build tools"
    echo
    echo "package tools"
    echo
    echo "import ("
    for m in $COMPONENTS; do echo "	_ \"k8s.io/kubernetes/cmd/$m\""; done
    echo ")"
  } >tools.go
  go mod tidy
  local ldflags="-s -w"
  for m in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $m.gitVersion=$K8S_VERSION -X $m.gitMajor=1 -X $m.gitMinor=$minor"
  done
  ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
  for m in $COMPONENTS; do
    local start=$SECONDS
    go build -ldflags "$ldflags" -o "$BIN/$m" "k8s.io/kubernetes/cmd/$m"
    say "built $m in $((SECONDS - start)) s"
  done
}

# ---- certificates ---------------------------------------------------------

# sign NAME SUBJECT [SANS]: a key and a certificate signed by the test CA,
# good for server and client use.
sign() {
  openssl genrsa -out "$1.key" 2048 2>/dev/null
  openssl req -new -key "$1.key" -subj "$2" -out "$1.csr" 2>/dev/null
  local ext=$'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth'
  [ -z "${3:-}" ] || ext+=$'\n'"subjectAltName=$3"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -out "$1.crt" \
    -extfile <(printf '%s\n' "$ext") 2>/dev/null
  rm -f "$1.csr"
}

# write_kubeconfig FILE USER CERT
write_kubeconfig() {
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: berth-test
  cluster: {server: "https://127.0.0.1:6443", certificate-authority: "$BASE/pki/ca.crt"}
users:
- name: $2
  user: {client-certificate: "$BASE/pki/$3.crt", client-key: "$BASE/pki/$3.key"}
contexts:
- name: berth-test
  context: {cluster: berth-test, user: $2}
current-context: berth-test
EOF
}

pki() {
  mkdir -p "$BASE/pki"
  (
    cd "$BASE/pki"
    [ -f ca.crt ] && exit 0
    local ip; ip=$(node_ip)
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 -subj "/CN=berth-test-ca" 2>/dev/null
    sign apiserver /CN=kube-apiserver "DNS:localhost,DNS:$NODE,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.96.0.1,IP:$ip"
    # One system:masters identity for kubectl, the controllers, and the
    # apiserver's calls to the kubelet.
    sign admin "/CN=admin/O=system:masters"
    sign kubelet "/CN=system:node:$NODE/O=system:nodes" "DNS:localhost,DNS:$NODE,IP:127.0.0.1,IP:$ip"
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
  write_kubeconfig "$BASE/admin.kubeconfig" admin admin
  write_kubeconfig "$BASE/kubelet.kubeconfig" "system:node:$NODE" kubelet
}

# ---- images ---------------------------------------------------------------

# image_tar OUT TAG ROOTFS ENTRYPOINT_JSON [USER]: an image archive
# `ctr images import` reads (the project's one image writer).
image_tar() { bash "$REPO/deploy/image-archive.sh" "$@"; }

busybox_root() {
  [ -x /bin/busybox ] && ! file_is_dynamic /bin/busybox || die "/bin/busybox is missing or dynamic: apt-get install busybox-static"
  mkdir -p "$1/bin" "$1/tmp" "$1/etc" "$1/root"
  cp /bin/busybox "$1/bin/busybox"
  local a
  for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$1/bin/$a"; done
  echo 'root:x:0:0:root:/root:/bin/sh' >"$1/etc/passwd"
  echo 'root:x:0:' >"$1/etc/group"
  chmod 1777 "$1/tmp"
}

file_is_dynamic() { ldd "$1" >/dev/null 2>&1; }

images() {
  local dir=$BASE/images
  mkdir -p "$dir"
  if [ ! -f "$dir/pause.tar" ]; then
    # The pause program of the Kubernetes sources, linked statically.
    local src; src=$(go env GOMODCACHE)/k8s.io/kubernetes@$K8S_VERSION/build/pause/linux/pause.c
    rm -rf "$dir/pause"; mkdir -p "$dir/pause"
    [ -f "$src" ] || go mod download "k8s.io/kubernetes@$K8S_VERSION"
    gcc -Os -static -DVERSION=berth-test -o "$dir/pause/pause" "$src"
    strip "$dir/pause/pause" 2>/dev/null || true
    image_tar "$dir/pause.tar" "$PAUSE" "$dir/pause" '["/pause"]' 65535:65535
  fi
  if [ ! -f "$dir/busybox.tar" ]; then
    rm -rf "$dir/busybox"; busybox_root "$dir/busybox"
    image_tar "$dir/busybox.tar" docker.io/library/busybox:local "$dir/busybox" '["/bin/sh"]'
  fi
  if [ ! -f "$dir/busybox-bash.tar" ]; then
    rm -rf "$dir/busybox-bash"; busybox_root "$dir/busybox-bash"
    rm -f "$dir/busybox-bash/bin/bash"
    cp /bin/bash "$dir/busybox-bash/bin/bash"
    local lib
    for lib in $(ldd /bin/bash | grep -o '/[^ ]*'); do
      mkdir -p "$dir/busybox-bash$(dirname "$lib")"
      cp -L "$lib" "$dir/busybox-bash$lib"
    done
    image_tar "$dir/busybox-bash.tar" docker.io/library/busybox-bash:local "$dir/busybox-bash" '["/bin/sh"]'
  fi
  if [ ! -f "$dir/busybox-notar.tar" ]; then
    # An image without tar: bash as sh (busybox's sh would find its tar
    # applet anyway), busybox's other applets.
    rm -rf "$dir/busybox-notar"; cp -a "$dir/busybox-bash" "$dir/busybox-notar"
    rm -f "$dir/busybox-notar/bin/tar"
    ln -sf bash "$dir/busybox-notar/bin/sh"
    image_tar "$dir/busybox-notar.tar" docker.io/library/busybox-notar:local "$dir/busybox-notar" '["/bin/sh"]'
  fi
  local ctr i; ctr=$(ctr_bin)
  for i in pause busybox busybox-bash busybox-notar; do
    "$ctr" -a "$SOCK" -n k8s.io images import --all-platforms "$dir/$i.tar" >/dev/null
  done
}

# ---- processes ------------------------------------------------------------

# launch NAME COMMAND…: runs COMMAND in a session of its own, logging to
# $BASE/log/NAME.log, its pid in $BASE/pid/NAME.
launch() {
  local name=$1; shift
  mkdir -p "$BASE/log" "$BASE/pid"
  setsid "$@" >"$BASE/log/$name.log" 2>&1 </dev/null &
  echo $! >"$BASE/pid/$name"
  say "started $name (pid $!, log $BASE/log/$name.log)"
}

# await WHAT SECONDS COMMAND…: waits until COMMAND succeeds.
await() {
  local what=$1 limit=$2 start=$SECONDS; shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS - start > limit)); then
      say "$what is not ready after $limit s"
      return 1
    fi
    sleep 0.5
  done
  say "$what ready after $((SECONDS - start)) s"
}

running() {
  local pid; pid=$(cat "$BASE/pid/$1" 2>/dev/null) || return 1
  kill -0 "$pid" 2>/dev/null
}

# halt NAME: SIGTERM to what `launch` started as NAME, SIGKILL after 20 s.
halt() {
  local pid i
  pid=$(cat "$BASE/pid/$1" 2>/dev/null) || return 0
  rm -f "$BASE/pid/$1"
  kill -0 "$pid" 2>/dev/null || return 0
  kill "$pid"
  for i in $(seq 40); do
    kill -0 "$pid" 2>/dev/null || { say "stopped $1"; return 0; }
    sleep 0.5
  done
  kill -9 "$pid" 2>/dev/null || true
  say "killed $1 with SIGKILL"
}

containerd_config() {
  if "$CONTAINERD" --version | grep -Eq ' v?2\.'; then
    cat <<EOF
version = 3
root = "$BASE/containerd/root"
state = "$RUNDIR/state"
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = "$RUNDIR/debug.sock"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$PAUSE"
[plugins.'io.containerd.cri.v1.runtime']
  enable_unprivileged_ports = true
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$BASE/cni/net.d"
EOF
  else
    cat <<EOF
version = 2
root = "$BASE/containerd/root"
state = "$RUNDIR/state"
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = "$RUNDIR/debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$BASE/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE"
  enable_unprivileged_ports = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$BASE/cni/net.d"
EOF
  fi
}

start_containerd() {
  running containerd && return 0
  mkdir -p "$BASE/containerd" "$BASE/cni/net.d" "$RUNDIR"
  containerd_config >"$BASE/containerd/config.toml"
  cat >"$BASE/cni/net.d/10-bridge.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "berth-test",
  "plugins": [{
    "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {"type": "host-local", "dataDir": "$BASE/cni/ipam", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}
  }]
}
EOF
  # containerd finds its shim on PATH: the one beside it comes first.
  PATH="$(dirname "$(command -v "$CONTAINERD")"):$PATH" launch containerd "$CONTAINERD" --config "$BASE/containerd/config.toml"
  await containerd 30 "$(ctr_bin)" -a "$SOCK" version
}

start_etcd() {
  running etcd && return 0
  launch etcd etcd --name berth-test --data-dir "$BASE/etcd" \
    --listen-client-urls http://127.0.0.1:12379 --advertise-client-urls http://127.0.0.1:12379 \
    --listen-peer-urls http://127.0.0.1:12380 --initial-advertise-peer-urls http://127.0.0.1:12380 \
    --initial-cluster berth-test=http://127.0.0.1:12380 --log-level warn
  await etcd 30 curl -sf http://127.0.0.1:12379/health
}

start_apiserver() {
  running kube-apiserver && return 0
  local p=$BASE/pki
  launch kube-apiserver "$BIN/kube-apiserver" --etcd-servers=http://127.0.0.1:12379 \
    --bind-address=0.0.0.0 --secure-port=6443 --advertise-address="$(node_ip)" \
    --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" --client-ca-file="$p/ca.crt" \
    --kubelet-client-certificate="$p/admin.crt" --kubelet-client-key="$p/admin.key" \
    --kubelet-certificate-authority="$p/ca.crt" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$p/sa.pub" --service-account-signing-key-file="$p/sa.key" \
    --api-audiences=https://kubernetes.default.svc.cluster.local --service-cluster-ip-range="$SERVICE_CIDR" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction --allow-privileged=true \
    --profiling=false --v=1
  await kube-apiserver 120 "$KUBECTL" get --raw=/readyz
}

start_controllers() {
  local p=$BASE/pki kc=$BASE/admin.kubeconfig
  running kube-controller-manager || launch kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig="$kc" --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
    --service-account-private-key-file="$p/sa.key" --root-ca-file="$p/ca.crt" \
    --cluster-signing-cert-file="$p/ca.crt" --cluster-signing-key-file="$p/ca.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" --leader-elect=false --bind-address=127.0.0.1 --secure-port=10257 --v=1
  running kube-scheduler || launch kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig="$kc" --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=10259 --v=1
}

start_kubelet() {
  running kubelet && return 0
  mkdir -p "$BASE/kubelet-root"
  # kubelet rewrites these; `down` puts them back.
  # shellcheck disable=SC2086
  [ -f "$BASE/sysctl.saved" ] || sysctl $SYSCTLS | sed 's/ = /=/' >"$BASE/sysctl.saved"
  cat >"$BASE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$SOCK
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
address: 0.0.0.0
port: 10250
tlsCertFile: $BASE/pki/kubelet.crt
tlsPrivateKeyFile: $BASE/pki/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $BASE/pki/ca.crt}
authorization: {mode: AlwaysAllow}
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
serializeImagePulls: false
evictionHard: {memory.available: "100Mi", nodefs.available: "2%", imagefs.available: "2%"}
imageGCHighThresholdPercent: 100
imageMinimumGCAge: 87600h
EOF
  launch kubelet "$BIN/kubelet" --config="$BASE/kubelet.yaml" --kubeconfig="$BASE/kubelet.kubeconfig" \
    --root-dir="$BASE/kubelet-root" --hostname-override="$NODE" --node-ip="$(node_ip)" --v=1
}

# bridge: the pod bridge with its gateway address, made before the first
# pod so that tests can listen on the gateway (the bridge CNI plugin takes
# it as it is).
bridge() {
  ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
  ip -4 addr show dev "$BRIDGE" | grep -q " $GATEWAY/" || ip addr add "$GATEWAY/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
}

# service_nat: what kube-proxy would do for the one service pods need, the
# API server's (https://$API_SERVICE_IP:443, in every pod's environment).
service_nat() {
  command -v iptables >/dev/null || die "iptables is missing: apt-get install iptables"
  iptables -t nat -N "$NAT_CHAIN" 2>/dev/null || iptables -t nat -F "$NAT_CHAIN"
  iptables -t nat -A "$NAT_CHAIN" -d "$API_SERVICE_IP/32" -p tcp --dport 443 -j DNAT --to-destination "$(node_ip):6443"
  iptables -t nat -C PREROUTING -j "$NAT_CHAIN" 2>/dev/null || iptables -t nat -I PREROUTING -j "$NAT_CHAIN"
}

service_nat_off() {
  command -v iptables >/dev/null || return 0
  while iptables -t nat -D PREROUTING -j "$NAT_CHAIN" 2>/dev/null; do :; done
  iptables -t nat -F "$NAT_CHAIN" 2>/dev/null || true
  iptables -t nat -X "$NAT_CHAIN" 2>/dev/null || true
}

import_images() {
  [ $# -gt 0 ] || die "usage: $0 import IMAGE.tar…"
  [ -S "$SOCK" ] || die "the cluster's containerd is not running ($SOCK): run $0 up"
  local ctr f; ctr=$(ctr_bin)
  for f in "$@"; do
    "$ctr" -a "$SOCK" -n k8s.io images import --all-platforms "$f" >/dev/null || die "importing $f failed"
    say "imported $f"
  done
}

status() {
  [ -f "$KUBECONFIG" ] && [ -x "$KUBECTL" ] && "$KUBECTL" get --raw=/readyz >/dev/null 2>&1 &&
    "$KUBECTL" get node "$NODE" >/dev/null 2>&1
}

up() {
  local start=$SECONDS b
  for b in $COMPONENTS; do
    [ -x "$BIN/$b" ] || die "$BIN/$b is missing: run BUILD=$BUILD $0 build first"
  done
  mkdir -p "$BASE"
  pki
  bridge
  service_nat
  start_containerd
  images
  start_etcd
  start_apiserver
  start_controllers
  start_kubelet
  await "node $NODE" 120 "$KUBECTL" get node "$NODE"
  "$KUBECTL" wait --for=condition=Ready "node/$NODE" --timeout=180s >/dev/null
  await "the default service account" 60 "$KUBECTL" -n default get serviceaccount default
  say "up in $((SECONDS - start)) s; export KUBECONFIG=$KUBECONFIG"
}

down() {
  local ctr c m ns
  ctr=$(ctr_bin)
  if running kube-apiserver; then
    "$KUBECTL" delete pods --all --all-namespaces --grace-period=0 --force >/dev/null 2>&1 || true
  fi
  for c in kubelet kube-scheduler kube-controller-manager kube-apiserver etcd; do halt "$c"; done
  if [ -S "$SOCK" ]; then
    # The containers of this containerd (not docker's): killing their tasks
    # ends their shims.
    for c in $("$ctr" -a "$SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
      "$ctr" -a "$SOCK" -n k8s.io tasks kill -s KILL "$c" >/dev/null 2>&1 || true
    done
    sleep 1
    for c in $("$ctr" -a "$SOCK" -n k8s.io containers ls -q 2>/dev/null); do
      "$ctr" -a "$SOCK" -n k8s.io tasks delete -f "$c" >/dev/null 2>&1 || true
      "$ctr" -a "$SOCK" -n k8s.io containers delete "$c" >/dev/null 2>&1 || true
    done
  fi
  halt containerd
  sleep 1
  for m in $(awk '{print $2}' /proc/self/mounts | grep -E "^($BASE|$RUNDIR)(/|$)" | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  service_nat_off
  if [ -f "$BASE/sysctl.saved" ]; then
    # shellcheck disable=SC2046
    sysctl -q -w $(cat "$BASE/sysctl.saved") && rm -f "$BASE/sysctl.saved"
  fi
  for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^cni-/ {print $1}'); do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$BASE/etcd" "$BASE/kubelet-root" "$BASE/containerd" "$BASE/cni" "$RUNDIR"
  say "down (certificates and images kept in $BASE)"
}

case ${1:-} in
build) build ;;
up) up ;;
status) status ;;
down) down ;;
import)
  shift
  import_images "$@"
  ;;
gateway) echo "$GATEWAY" ;;
*)
  echo "usage: $0 build|up|status|down|import FILE…|gateway   (BUILD=$BUILD)" >&2
  exit 2
  ;;
esac
