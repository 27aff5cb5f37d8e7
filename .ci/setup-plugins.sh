# shellcheck shell=bash
# Sourced by .ci/run (bash, set -euo pipefail, as root, Debian 12).
#
# What the plugin install/publish tests (plugins/, cmd/berth) need: Debian's
# docker-registry binary. The tests start their own registry on a free port
# of 127.0.0.1, with its own config and storage, and stop it; this script
# starts nothing. Without the binary those tests skip, so CI installs it.
#
# Idempotent: with the binary present it does nothing.

berth_plugins_setup() {
  if command -v docker-registry >/dev/null 2>&1 || [ -x /usr/bin/docker-registry ]; then
    return 0
  fi
  echo "setup-plugins: installing docker-registry"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-registry >/dev/null
  if ! [ -x /usr/bin/docker-registry ]; then
    echo "setup-plugins: docker-registry did not install /usr/bin/docker-registry" >&2
    return 1
  fi
}

berth_plugins_setup
unset -f berth_plugins_setup
