#!/usr/bin/env bash
# Builds the tiny guest the qemu executor's tests boot, from Debian's
# packages only, and prints the folder that holds it (the last line of
# standard output; progress goes to standard error).
#
# The guest:
#   vmlinuz       Debian's kernel, from the linux-image-amd64 package
#                 (downloaded with apt-get download, extracted, never installed)
#   initrd.img    busybox-static and the kernel modules for virtio (PCI,
#                 block, net) and ext4; its /init (initramfs-init) mounts
#                 /dev/vda and switches to it
#   base.qcow2    the root file system: ext4 made with mkfs.ext4 -d from a
#                 tree of busybox (init, sh, ip, …), bash, GNU tar and
#                 OpenSSH's sshd, each with the libraries ldd names;
#                 busybox init runs rcS (file systems, static 10.0.2.15) and
#                 keeps sshd running. Jobs write to their overlay of it.
#   append        the kernel command line to boot it with
#   id_ed25519    the private key of the guest's user ci (no passphrase)
#   known_hosts   the guest's fixed host key under the name berth-test-guest
#   kernel-version  the kernel's release (uname -r in the guest)
#
# The folder is <cache>/<kernel release>-<hash>, the hash covering this
# script, the files beside it and the versions of the packages it copies
# from: a second run with nothing changed only prints the folder. Older
# builds are removed. <cache> is $BERTH_QEMU_GUEST_CACHE, by default
# /var/cache/berth-test/qemu-guest (outside any clone, so CI builds once).
#
# Needs (Debian): apt-get, dpkg-deb, busybox-static, openssh-server,
# openssh-client (ssh-keygen), e2fsprogs (mkfs.ext4 -d), qemu-utils
# (qemu-img), cpio; and root (mknod, chown). .ci/setup-qemu.sh installs
# them and runs this.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${BERTH_QEMU_GUEST_CACHE:-/var/cache/berth-test/qemu-guest}

log() { echo "build-guest: $*" >&2; }
die() {
	echo "build-guest: $*" >&2
	exit 1
}

# Modules the guest needs; their dependencies are found in the modules.
wanted_modules=(virtio_pci virtio_blk virtio_net ext4 crc32c_generic)

[ "$(id -u)" = 0 ] || die "run it as root: it makes a device node and files owned by the guest's user"
for cmd in apt-get apt-cache dpkg-deb dpkg-query ldd mkfs.ext4 qemu-img cpio gzip ssh-keygen sha256sum flock; do
	command -v "$cmd" >/dev/null 2>&1 || die "$cmd is missing (Debian: apt-get install qemu-utils e2fsprogs cpio openssh-client; .ci/setup-qemu.sh installs all)"
done
for f in /bin/busybox /usr/sbin/sshd /usr/bin/bash /usr/bin/tar; do
	[ -x "$f" ] || die "$f is missing (Debian: apt-get install busybox-static openssh-server bash tar)"
done
if ldd /bin/busybox >/dev/null 2>&1; then
	die "/bin/busybox is dynamically linked; the initramfs needs busybox-static's (apt-get install busybox-static)"
fi

kernel_pkg() {
	apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}
kpkg=$(kernel_pkg)
if [ -z "$kpkg" ]; then
	log "apt-cache does not know linux-image-amd64 yet; running apt-get update"
	apt-get update -qq >&2
	kpkg=$(kernel_pkg)
fi
[ -n "$kpkg" ] || die "cannot resolve linux-image-amd64 to a kernel package (apt-cache depends linux-image-amd64)"
krelease=${kpkg#linux-image-}
kversion=$(apt-cache policy "$kpkg" | awk '/Candidate:/ { print $2; exit }')
[ -n "$kversion" ] && [ "$kversion" != "(none)" ] || die "no candidate version of $kpkg"

pkg_versions=$(dpkg-query -W -f='${Package}=${Version}\n' busybox-static openssh-server bash tar libc6 2>/dev/null | sort)
hash=$(
	{
		cat "$here/build-guest.sh" "$here/initramfs-init" "$here/rcS" "$here/inittab" "$here/sshd_config"
		echo "$kpkg=$kversion"
		echo "$pkg_versions"
	} | sha256sum | cut -c1-12
)
out=$cache/$krelease-$hash

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [ -f "$out/.complete" ]; then
	log "up to date: $out"
	echo "$out"
	exit 0
fi

work=$(mktemp -d "$cache/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$SECONDS

# The kernel package, kept between builds.
mkdir -p "$cache/debs"
deb=$(ls "$cache/debs/${kpkg}_"*.deb 2>/dev/null | grep -F "_${kversion//:/%3a}_" | head -n 1 || true)
if [ -z "$deb" ]; then
	log "downloading $kpkg $kversion"
	(cd "$cache/debs" && apt-get download -q -o APT::Sandbox::User=root "$kpkg=$kversion" >&2)
	deb=$(ls "$cache/debs/${kpkg}_"*.deb | grep -F "_${kversion//:/%3a}_" | head -n 1)
fi
for old in "$cache"/debs/*.deb; do
	[ "$old" = "$deb" ] || rm -f "$old"
done

# vmlinuz and the modules, extracted from the package without installing it.
kroot=$work/kernel
mkdir -p "$kroot"
dpkg-deb --fsys-tarfile "$deb" | tar -t >"$work/kernel-files"
extract() { dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$kroot" "$@"; }
extract "./boot/vmlinuz-$krelease"

# module_file NAME prints the package's path of module NAME ('-' and '_'
# are the same in module names).
module_file() {
	awk -v want="${1//-/_}" '
		/\.ko$/ { b = $0; sub(/.*\//, "", b); sub(/\.ko$/, "", b); gsub(/-/, "_", b); if (b == want) { print; exit } }
	' "$work/kernel-files"
}
declare -A mod_path mod_deps
todo=("${wanted_modules[@]}")
while [ ${#todo[@]} -gt 0 ]; do
	paths=()
	for m in "${todo[@]}"; do
		p=$(module_file "$m")
		[ -n "$p" ] || die "$kpkg has no kernel module $m (is it built in now? then drop it from wanted_modules)"
		mod_path[$m]=$p
		paths+=("$p")
	done
	extract "${paths[@]}"
	next=()
	for m in "${todo[@]}"; do
		# The .modinfo section holds NUL-terminated key=value strings.
		deps=$(tr '\0' '\n' <"$kroot/${mod_path[$m]}" | sed -n 's/^depends=//p' | head -n 1 | tr ',' ' ')
		mod_deps[$m]=$deps
		for d in $deps; do
			d=${d//-/_}
			if [ -z "${mod_path[$d]:-}" ] && [[ " ${next[*]} " != *" $d "* ]]; then
				next+=("$d")
			fi
		done
	done
	todo=("${next[@]}")
done
order=()
declare -A placed
place() {
	local m=${1//-/_} d
	[ -z "${placed[$m]:-}" ] || return 0
	placed[$m]=1
	for d in ${mod_deps[$m]}; do
		place "$d"
	done
	order+=("$m")
}
for m in "${wanted_modules[@]}"; do
	place "$m"
done
log "kernel $krelease ($kversion), modules in load order: ${order[*]}"

# The initramfs.
ird=$work/initramfs
mkdir -p "$ird/bin" "$ird/dev" "$ird/proc" "$ird/sys" "$ird/newroot" "$ird/lib/modules"
cp /bin/busybox "$ird/bin/busybox"
install -m 755 "$here/initramfs-init" "$ird/init"
mknod -m 600 "$ird/dev/console" c 5 1
for m in "${order[@]}"; do
	cp "$kroot/${mod_path[$m]}" "$ird/lib/modules/$m.ko"
done
printf '%s\n' "${order[@]}" >"$ird/lib/modules/load-order"

# The root file system tree (merged /usr, as Debian's).
root=$work/rootfs
mkdir -p "$root/usr/bin" "$root/usr/sbin" "$root/usr/lib" "$root/usr/lib64"
ln -s usr/bin "$root/bin"
ln -s usr/sbin "$root/sbin"
ln -s usr/lib "$root/lib"
ln -s usr/lib64 "$root/lib64"
mkdir -p "$root/dev" "$root/proc" "$root/sys" "$root/run" "$root/etc/ssh" "$root/etc/init.d" "$root/var/empty"
install -d -m 1777 "$root/tmp"
install -d -m 700 "$root/root"

# copy_program FILE copies a program and the libraries ldd names for it.
copy_program() {
	local file=$1 lib
	install -D -m 755 "$file" "$root$file"
	for lib in $(ldd "$file" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
		[ -e "$root$lib" ] || install -D -m 755 "$(readlink -f "$lib")" "$root$lib"
	done
}
copy_program /usr/bin/bash
copy_program /usr/bin/tar
copy_program /usr/sbin/sshd
install -m 755 /bin/busybox "$root/usr/bin/busybox"
for applet in $(/bin/busybox --list); do
	[ -e "$root/usr/bin/$applet" ] || ln -s busybox "$root/usr/bin/$applet"
done
ln -s ../bin/busybox "$root/usr/sbin/init"
ln -s ../bin/busybox "$root/usr/sbin/nologin"

install -m 644 "$here/inittab" "$root/etc/inittab"
install -m 755 "$here/rcS" "$root/etc/init.d/rcS"
install -m 644 "$here/sshd_config" "$root/etc/ssh/sshd_config"
cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
sshd:x:100:65534:sshd privilege separation:/run/sshd:/usr/sbin/nologin
ci:x:1000:1000:berth test user:/home/ci:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
# "*": no password, but not locked (sshd without PAM refuses locked accounts).
cat >"$root/etc/shadow" <<'EOF'
root:*:19000:0:99999:7:::
sshd:*:19000:0:99999:7:::
ci:*:19000:0:99999:7:::
nobody:*:19000:0:99999:7:::
EOF
chmod 640 "$root/etc/shadow"
printf 'root:x:0:\nci:x:1000:\nnogroup:x:65534:\n' >"$root/etc/group"
printf '/bin/sh\n/usr/bin/sh\n/bin/bash\n/usr/bin/bash\n' >"$root/etc/shells"
printf '127.0.0.1 localhost berth-test-guest\n' >"$root/etc/hosts"

mkdir -p "$work/out"
ssh-keygen -q -t ed25519 -N '' -C berth-test-guest -f "$root/etc/ssh/ssh_host_ed25519_key"
ssh-keygen -q -t ed25519 -N '' -C berth-test-client -f "$work/out/id_ed25519"
echo "berth-test-guest $(cut -d' ' -f1,2 "$root/etc/ssh/ssh_host_ed25519_key.pub")" >"$work/out/known_hosts"
install -d -m 755 -o 1000 -g 1000 "$root/home/ci"
install -d -m 700 -o 1000 -g 1000 "$root/home/ci/.ssh"
install -m 600 -o 1000 -g 1000 "$work/out/id_ed25519.pub" "$root/home/ci/.ssh/authorized_keys"

# The images. The ext4 file system is made whole now (no lazy init, which
# would write to every job's overlay in the background); qemu-img leaves
# its zero blocks out of the qcow2.
truncate -s 512M "$work/root.ext4"
mkfs.ext4 -q -F -L berth-guest -E lazy_itable_init=0,lazy_journal_init=0 -d "$root" "$work/root.ext4"
qemu-img convert -f raw -O qcow2 "$work/root.ext4" "$work/out/base.qcow2"
(cd "$ird" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -1 >"$work/out/initrd.img"
cp "$kroot/boot/vmlinuz-$krelease" "$work/out/vmlinuz"
echo "console=ttyS0 quiet loglevel=3 panic=-1" >"$work/out/append"
echo "$krelease" >"$work/out/kernel-version"
touch "$work/out/.complete"

for old in "$cache"/*-*/; do
	old=${old%/}
	[ "$old" = "$out" ] || rm -rf "$old"
done
rm -rf "$out"
mv "$work/out" "$out"
log "built $out in $((SECONDS - start)) s (base.qcow2 $(du -h "$out/base.qcow2" | cut -f1), initrd.img $(du -h "$out/initrd.img" | cut -f1))"
echo "$out"
