#!/bin/bash
# image-archive.sh OUT TAG ROOTFS ENTRYPOINT_JSON [USER] [ENV_JSON]
#
# Writes OUT, a one-layer image archive of the folder ROOTFS tagged TAG, in
# the format `docker load`, `podman load` and `ctr images import` read (a
# docker-archive: manifest.json, the image config, layer.tar). No daemon
# and no registry are needed. ENTRYPOINT_JSON is a JSON array
# ('["/bin/sh"]'); USER is "uid:gid" (empty: root); ENV_JSON is a JSON
# array of extra "NAME=value" strings, after PATH.
#
# Used by deploy/kubernetes/build-image.sh (berth's image) and
# test/k8s/cluster.sh (the test cluster's images).
set -euo pipefail

if [ $# -lt 4 ] || [ $# -gt 6 ]; then
  echo "usage: $0 OUT TAG ROOTFS ENTRYPOINT_JSON [USER] [ENV_JSON]" >&2
  exit 2
fi
out=$1 tag=$2 rootfs=$3 entrypoint=$4 user=${5:-} env=${6:-[]}
[ -d "$rootfs" ] || { echo "$0: $rootfs is not a folder" >&2; exit 1; }
case $env in '['*']') ;; *) echo "$0: ENV_JSON must be a JSON array, got $env" >&2; exit 1 ;; esac

case $(uname -m) in
x86_64) arch=amd64 ;;
aarch64) arch=arm64 ;;
*) arch=$(uname -m) ;;
esac

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Owners as they are in ROOTFS (numeric), so a folder the image's user
# must write to can be prepared; sorted names make the layer reproducible.
tar -C "$rootfs" --numeric-owner --sort=name --mtime=@0 -cf "$tmp/layer.tar" .
layer=$(sha256sum "$tmp/layer.tar" | cut -d' ' -f1)
extra=${env#[}
extra=${extra%]}
printf '{"architecture":"%s","os":"linux","config":{"Entrypoint":%s,"User":"%s","Env":["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"%s]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
  "$arch" "$entrypoint" "$user" "${extra:+,$extra}" "$layer" >"$tmp/config.json"
cfg=$(sha256sum "$tmp/config.json" | cut -d' ' -f1)
mv "$tmp/config.json" "$tmp/$cfg.json"
printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["layer.tar"]}]' "$cfg" "$tag" >"$tmp/manifest.json"
# Written beside OUT and renamed: no half-written archive under its name.
tar -C "$tmp" -cf "$out.partial" manifest.json "$cfg.json" layer.tar
mv "$out.partial" "$out"
