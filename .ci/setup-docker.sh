# shellcheck shell=bash
# Sourced by .ci/run (bash, set -euo pipefail, as root, Debian 12, no systemd).
#
# Brings up what the docker executor's tests need:
#   - Debian's docker.io (engine 20.10, API 1.41), started as a background
#     dockerd when no engine answers;
#   - busybox-static, the only thing the tests build their images from
#     (nothing can be pulled from the internet here);
#   - Debian's docker-registry, serving plain HTTP on 127.0.0.1:5000 (the
#     engine trusts 127.0.0.0/8 without TLS), for real pulls.
# Exports BERTH_DOCKER_REGISTRY and BERTH_BUSYBOX, which the tests read.
#
# Idempotent: a second run finds everything answering and does nothing.
# Whatever it starts keeps its pid in /run/berth-ci/*.pid and logs to
# /var/log/berth-ci/*.log.

berth_docker_setup() {
  local run_dir=/run/berth-ci log_dir=/var/log/berth-ci
  local registry_addr=127.0.0.1:5000
  local busybox=/bin/busybox
  local pkgs=() i

  command -v dockerd >/dev/null 2>&1 || pkgs+=(docker.io)
  # Only busybox-static's /bin/busybox is static, as a FROM scratch image needs.
  installed busybox-static || pkgs+=(busybox-static)
  command -v docker-registry >/dev/null 2>&1 || [ -x /usr/bin/docker-registry ] || pkgs+=(docker-registry)
  if [ ${#pkgs[@]} -gt 0 ]; then
    echo "setup-docker: installing ${pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  fi
  mkdir -p "$run_dir" "$log_dir"

  # The engine: whatever answers (DOCKER_HOST or the default socket) is used.
  if ! docker info >/dev/null 2>&1; then
    if [ -n "${DOCKER_HOST:-}" ]; then
      echo "setup-docker: DOCKER_HOST=$DOCKER_HOST does not answer; unset it to use a local dockerd" >&2
      return 1
    fi
    echo "setup-docker: starting dockerd (log: $log_dir/dockerd.log)"
    # setsid: dockerd must not get the terminal's signals; it is ended with
    # the machine (or: kill "$(cat $run_dir/dockerd.pid)").
    setsid dockerd --host unix:///var/run/docker.sock --pidfile "$run_dir/dockerd.pid" \
      >"$log_dir/dockerd.log" 2>&1 </dev/null &
    for i in $(seq 1 120); do
      docker info >/dev/null 2>&1 && break
      if [ "$i" = 120 ]; then
        echo "setup-docker: dockerd did not answer within 60 s; last lines of its log:" >&2
        tail -n 20 "$log_dir/dockerd.log" >&2
        return 1
      fi
      sleep 0.5
    done
  fi

  # The registry on 127.0.0.1:5000.
  if ! registry_up "$registry_addr"; then
    echo "setup-docker: starting docker-registry on $registry_addr (log: $log_dir/registry.log)"
    mkdir -p /var/lib/berth-ci/registry
    cat >"$run_dir/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: /var/lib/berth-ci/registry
  delete:
    enabled: true
http:
  addr: $registry_addr
EOF
    setsid docker-registry serve "$run_dir/registry.yml" >"$log_dir/registry.log" 2>&1 </dev/null &
    echo $! >"$run_dir/registry.pid"
    for i in $(seq 1 60); do
      registry_up "$registry_addr" && break
      if [ "$i" = 60 ]; then
        echo "setup-docker: docker-registry did not answer on $registry_addr within 30 s; its log:" >&2
        tail -n 20 "$log_dir/registry.log" >&2
        return 1
      fi
      sleep 0.5
    done
  fi

  export BERTH_DOCKER_REGISTRY=$registry_addr
  export BERTH_BUSYBOX=$busybox
  echo "setup-docker: engine $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})'), registry $registry_addr"
}

# registry_up says whether a registry answers GET /v2/ at addr (host:port).
registry_up() {
  local host=${1%:*} port=${1##*:} status
  # bash's /dev/tcp: no curl or wget needed.
  { exec 9<>"/dev/tcp/$host/$port"; } 2>/dev/null || return 1
  printf 'GET /v2/ HTTP/1.0\r\nHost: %s\r\n\r\n' "$1" >&9
  IFS= read -r -t 5 status <&9 || status=
  exec 9>&-
  case $status in
    "HTTP/1."?" 200"*) return 0 ;;
    *) return 1 ;;
  esac
}

# installed says whether the Debian package is installed.
installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

berth_docker_setup
unset -f berth_docker_setup registry_up installed
