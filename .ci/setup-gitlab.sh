# shellcheck shell=bash
# Sourced by .ci/run (bash, set -euo pipefail, as root, Debian 12).
#
# The GitLab runner tests need Debian's git with its smart-HTTP CGI program
# git-http-backend (they serve repositories with it on 127.0.0.1): git is
# installed when missing; a second run finds it and does nothing.
#
# Then each fuzz target of the GitLab job source (job-response decoder,
# config loader, trace masker) runs for a short, bounded time:
# BERTH_CI_FUZZTIME (default 5s each; 0 skips).

berth_gitlab_setup() {
  local backend=/usr/lib/git-core/git-http-backend
  local fuzztime="${BERTH_CI_FUZZTIME:-5s}"
  local target name pkg
  if ! command -v git >/dev/null 2>&1 || [ ! -x "$backend" ]; then
    echo "setup-gitlab: installing git (for git http-backend)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq git >/dev/null
  fi
  if [ ! -x "$backend" ]; then
    echo "setup-gitlab: $backend is missing after installing git" >&2
    return 1
  fi
  [ "$fuzztime" = "0" ] && return 0
  for target in FuzzDecodeJob:./host/gitlab FuzzParse:./host/config FuzzMasker:./host/trace; do
    name=${target%%:*} pkg=${target#*:}
    echo "setup-gitlab: fuzzing $name ($pkg) for $fuzztime"
    go test "$pkg" -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" -fuzzminimizetime 100x
  done
}
berth_gitlab_setup
