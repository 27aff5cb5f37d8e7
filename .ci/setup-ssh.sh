# shellcheck shell=bash
# Sourced by .ci/run (bash, set -euo pipefail, as root, Debian 12, no systemd).
#
# Installs what the ssh and virtualbox executors' tests need: OpenSSH's
# server (/usr/sbin/sshd) and client (ssh, ssh-keygen), and Dropbear's
# server (/usr/sbin/dropbear, dropbearkey). It starts nothing:
# each test starts its own sshd on a free 127.0.0.1 port with its own host
# keys and config, and stops it. Debian's package would start a system sshd
# on port 22 when it is installed; a policy-rc.d that refuses service starts
# is put in place for the install when there is none, and removed after.
#
# Idempotent and fast when both are present (no apt-get at all).

berth_ssh_setup() {
  local pkgs=()
  [ -x /usr/sbin/sshd ] || pkgs+=(openssh-server)
  command -v ssh >/dev/null 2>&1 && command -v ssh-keygen >/dev/null 2>&1 || pkgs+=(openssh-client)
  # Dropbear's server too: stages behave differently under it (sshexec's
  # tests run against both); dropbear-bin has no service to start.
  [ -x /usr/sbin/dropbear ] && command -v dropbearkey >/dev/null 2>&1 || pkgs+=(dropbear-bin)
  berth_apt_install setup-ssh "${pkgs[@]}" || return
  # sshd's privilege separation directory; a test makes it too, but the
  # tests may run as a user who cannot.
  mkdir -p /run/sshd
  chmod 755 /run/sshd
  echo "setup-ssh: $(/usr/sbin/sshd -V 2>&1 | head -n 1 || true); $(/usr/sbin/dropbear -V 2>&1 | head -n 1 || true)"
}

berth_ssh_setup
unset -f berth_ssh_setup
