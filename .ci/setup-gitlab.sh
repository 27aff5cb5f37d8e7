# shellcheck shell=bash
# Sourced by .ci/run (bash, set -euo pipefail, as root, Debian 12).
#
# The GitLab runner tests need Debian's git with its smart-HTTP CGI program
# git-http-backend (they serve repositories with it on 127.0.0.1): git is
# installed when missing; a second run finds it and does nothing.

berth_gitlab_setup() {
  local backend=/usr/lib/git-core/git-http-backend
  if ! command -v git >/dev/null 2>&1 || [ ! -x "$backend" ]; then
    echo "setup-gitlab: installing git (for git http-backend)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq git >/dev/null
  fi
  if [ ! -x "$backend" ]; then
    echo "setup-gitlab: $backend is missing after installing git" >&2
    return 1
  fi
}
berth_gitlab_setup
