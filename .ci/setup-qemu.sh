# shellcheck shell=bash
# Sourced by .ci/run (bash, set -euo pipefail, as root, Debian 12, no systemd).
#
# Brings up what the qemu executor's tests need:
#   - QEMU 7.2 (qemu-system-x86, qemu-utils), the programs the executor runs;
#   - what test/qemu/build-guest.sh makes the test guest from: busybox-static,
#     openssh-server (its sshd goes into the guest), openssh-client
#     (ssh-keygen), e2fsprogs (mkfs.ext4 -d) and cpio; the script downloads
#     Debian's kernel package itself (apt-get download, never installed).
# Debian's openssh-server would start a system sshd when it is installed; a
# policy-rc.d that refuses service starts is put in place for the install
# when there is none, and removed after.
#
# Then it builds the guest, which is cached outside the clone
# (/var/cache/berth-test/qemu-guest, keyed by the kernel's version and a
# hash of the build script, its files and the packages it copies from), and
# exports BERTH_QEMU_GUEST, the folder the tests boot it from. It starts
# nothing: each test starts its own VMs and kills them.
#
# Idempotent and fast when all is there (no apt-get, the guest reused).

berth_qemu_setup() {
  local pkgs=() guest
  command -v qemu-system-x86_64 >/dev/null 2>&1 || pkgs+=(qemu-system-x86)
  command -v qemu-img >/dev/null 2>&1 || pkgs+=(qemu-utils)
  [ -x /usr/sbin/sshd ] || pkgs+=(openssh-server)
  command -v ssh-keygen >/dev/null 2>&1 || pkgs+=(openssh-client)
  # Only busybox-static's /bin/busybox can run in the initramfs, without libraries.
  dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed' || pkgs+=(busybox-static)
  command -v mkfs.ext4 >/dev/null 2>&1 || pkgs+=(e2fsprogs)
  command -v cpio >/dev/null 2>&1 || pkgs+=(cpio)
  berth_apt_install setup-qemu "${pkgs[@]}" || return
  if ! guest=$(bash test/qemu/build-guest.sh); then
    echo "setup-qemu: building the test guest failed (bash test/qemu/build-guest.sh)" >&2
    return 1
  fi
  export BERTH_QEMU_GUEST=$guest
  echo "setup-qemu: $(qemu-system-x86_64 --version | head -n 1), test guest $BERTH_QEMU_GUEST"
}

berth_qemu_setup
unset -f berth_qemu_setup
