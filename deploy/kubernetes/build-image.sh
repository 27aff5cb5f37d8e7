#!/bin/bash
# Builds berth's container image as an image archive, without a daemon or a
# registry:
#
#   deploy/kubernetes/build-image.sh [OUT] [TAG]
#       OUT  the archive to write (default: berth-image.tar)
#       TAG  the image's name (default: berth:<version>)
#
# then load it where it is needed: `docker load -i OUT` (and push it to your
# registry), `podman load -i OUT`, or `ctr -n k8s.io images import OUT` on a
# node.
#
# The image is FROM scratch: berth built static (it runs its built-in
# executors by re-executing itself, so nothing else is needed for them), the
# CA certificates, and git with the libraries it loads plus a /bin/sh for it
# (berth fetches a job's sources with git before handing them to the
# executor). It runs as the
# unprivileged user 65532, with HOME=/var/lib/berth (its working
# directory: mount a volume there). Git's submodule and LFS support are not
# included (they need a shell and git-lfs).
#
# Needs, on the building machine (Debian): Go, git, ca-certificates.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
out=$(realpath -m "${1:-berth-image.tar}")
version=${BERTH_VERSION:-$(git -C "$repo" describe --tags --always --dirty 2>/dev/null || echo dev)}
tag=${2:-berth:$version}
uid=65532

git=$(command -v git) || { echo "build-image.sh: git is missing: apt-get install git" >&2; exit 1; }
certs=/etc/ssl/certs/ca-certificates.crt
[ -f "$certs" ] || { echo "build-image.sh: $certs is missing: apt-get install ca-certificates" >&2; exit 1; }
gitcore=$("$git" --exec-path)

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

# berth, static.
CGO_ENABLED=0 go -C "$repo" build -trimpath -ldflags "-s -w -X main.version=$version" -o "$root/usr/local/bin/berth" ./cmd/berth

# git, its HTTP(S) transport, its upload-pack (berth fetches a job's
# sources from a local mirror, for which git starts `git-upload-pack` through
# /bin/sh), a shell for that (dash), and every library they load, at the
# paths the dynamic loader looks in.
dash=$(command -v dash) || { echo "build-image.sh: dash is missing: apt-get install dash" >&2; exit 1; }
mkdir -p "$root/usr/bin" "$root/bin" "$root$gitcore"
cp "$git" "$root/usr/bin/git"
ln -s git "$root/usr/bin/git-upload-pack"
ln -s /usr/bin/git "$root$gitcore/git-upload-pack"
cp "$gitcore/git-remote-http" "$root$gitcore/git-remote-http"
ln -s git-remote-http "$root$gitcore/git-remote-https"
cp "$dash" "$root/bin/sh"
for lib in $({ ldd "$git"; ldd "$gitcore/git-remote-http"; ldd "$dash"; } | grep -o '/[^ ]*' | sort -u); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done

# CA certificates, users, and the folders berth writes to.
mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/var/lib/berth"
cp "$certs" "$root/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nberth:x:%d:%d:berth:/var/lib/berth:/sbin/nologin\n' "$uid" "$uid" >"$root/etc/passwd"
printf 'root:x:0:\nberth:x:%d:\n' "$uid" >"$root/etc/group"
chmod 1777 "$root/tmp"
chown "$uid:$uid" "$root/var/lib/berth"

bash "$repo/deploy/image-archive.sh" "$out" "$tag" "$root" '["/usr/local/bin/berth"]' "$uid:$uid" \
  '["HOME=/var/lib/berth","SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"]'
echo "$tag in $out ($(du -h "$out" | cut -f1))"
