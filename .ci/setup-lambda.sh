# shellcheck shell=bash
# Sourced by .ci/run (bash, set -euo pipefail, as root, Debian 12, with Go).
#
# Brings up what the lambda executor's tests need: the AWS Lambda Runtime
# Interface Emulator (aws-lambda-rie), built from source with go install.
# The tests start their own emulators on 127.0.0.1 and build the function
# themselves; nothing runs in the background.
# Exports BERTH_LAMBDA_RIE (the emulator binary), which the tests read: with
# it set, a missing emulator fails the tests instead of skipping them.
#
# Idempotent: a second run finds the binary and does nothing.

berth_lambda_setup() {
  local version=v0.0.0-20261030222936-bef5c4ba774d
  local rie gobin
  gobin=$(go env GOBIN)
  [ -n "$gobin" ] || gobin="$(go env GOPATH | cut -d: -f1)/bin"
  rie=$(command -v aws-lambda-rie 2>/dev/null || true)
  if [ -z "$rie" ] && [ -x "$gobin/aws-lambda-rie" ]; then
    rie="$gobin/aws-lambda-rie"
  fi
  if [ -z "$rie" ]; then
    echo "setup-lambda: installing aws-lambda-rie $version with go install"
    go install "github.com/aws/aws-lambda-runtime-interface-emulator/cmd/aws-lambda-rie@$version"
    rie="$gobin/aws-lambda-rie"
  fi
  if [ ! -x "$rie" ]; then
    echo "setup-lambda: $rie is missing after go install" >&2
    return 1
  fi
  export BERTH_LAMBDA_RIE="$rie"
  echo "setup-lambda: BERTH_LAMBDA_RIE=$BERTH_LAMBDA_RIE"
}

berth_lambda_setup
