# berth's step wrapper for container executors (docker, kubernetes): it runs
# one step inside the job's container. The executor runs it with an exec:
#   sh -c 'BERTH_STEP_SH=$1; shift; eval "$BERTH_STEP_SH"' berth-step TEXT MODE ARGS…
# (stepwrap.Command builds that), so nothing has to be copied in first.
#
#   run SHELL SCRIPT PIDFILE [DIR [OOMHINT]]
#       Saves stdin (the step's script) as SCRIPT, runs it with SHELL (in DIR,
#       created when missing, when given) and exits with its status. The
#       wrapper is the leader of the step's process group and writes the
#       group's id to PIDFILE; what the step leaves running in the group is
#       killed when SHELL exits. With OOMHINT, a step whose processes the
#       kernel killed for lack of memory gets a line on stderr saying so,
#       ending with OOMHINT (which names the memory setting).
#   signal SIGNAL PIDFILE
#       Sends SIGNAL to the step's process group. KILL is repeated until
#       nothing of the group is left (about 10 s at most).
#
# It uses shell builtins, /proc, mkdir, rm, sleep and cat (a slower loop
# without it) only, so that any image with a POSIX sh runs it.

# berth_pgrp PID: sets _pg to the process group of PID; false when PID is
# gone or a zombie. (No command substitution here or below: a subshell
# would be a member of the group it looks at.)
berth_pgrp() {
	read -r _stat 2>/dev/null <"/proc/$1/stat" || return 1
	set -f
	# After "PID (COMM) " come state, ppid and pgrp.
	# shellcheck disable=SC2086
	set -- ${_stat##*) }
	set +f
	_pg=$3
	[ "$1" != Z ] && [ "$1" != X ]
}

# berth_signal_group SIGNAL GROUP SPARE: sends SIGNAL to each live process of
# GROUP but SPARE; false when there was none.
berth_signal_group() {
	_none=1
	for _d in /proc/[0-9]*; do
		_p=${_d#/proc/}
		[ "$_p" = "$3" ] && continue
		berth_pgrp "$_p" || continue
		[ "$_pg" = "$2" ] || continue
		kill -s "$1" "$_p" 2>/dev/null
		_none=0
	done
	return $_none
}

# berth_kill GROUP SPARE: SIGKILLs the group (but SPARE) until it is empty;
# false when something is left after about 10 s.
berth_kill() {
	_n=0
	while berth_signal_group KILL "$1" "$2"; do
		_n=$((_n + 1))
		[ "$_n" -gt 100 ] && return 1
		sleep 0.1 2>/dev/null || sleep 1
	done
	return 0
}

# berth_oom_kills: sets _oom to the number of processes the kernel killed for
# lack of memory in this container's cgroup (v2 memory.events, or v1
# memory.oom_control), 0 when neither can be read.
berth_oom_kills() {
	_oom=0
	for _f in /sys/fs/cgroup/memory.events /sys/fs/cgroup/memory/memory.oom_control; do
		[ -r "$_f" ] || continue
		while read -r _k _v; do
			[ "$_k" = oom_kill ] && _oom=$_v
		done <"$_f"
		return 0
	done
}

berth_run() {
	berth_pgrp $$
	if [ "$_pg" != "$$" ] && [ -z "${BERTH_SETSID-}" ] && command -v setsid >/dev/null 2>&1; then
		BERTH_SETSID=1 exec setsid sh -c 'BERTH_STEP_SH=$1; shift; eval "$BERTH_STEP_SH"' berth-step "$BERTH_STEP_SH" run "$@"
	fi
	berth_pgrp $$
	[ "$_pg" = "$$" ] || echo "berth: the step has no process group of its own (the image has no setsid); a cancel stops only its shell" >&2
	unset BERTH_SETSID BERTH_STEP_SH
	echo "$$" >"$3" || echo "berth: cannot write $3; a cancel cannot reach this step" >&2
	if command -v cat >/dev/null 2>&1; then
		(umask 077 && exec cat >"$2")
	else
		(
			umask 077
			while IFS= read -r _l || [ -n "$_l" ]; do printf '%s\n' "$_l"; done >"$2"
		)
	fi || {
		echo "berth: cannot save the step's script as $2" >&2
		exit 126
	}
	if [ -n "${4-}" ]; then
		mkdir -p "$4" && cd "$4" || {
			echo "berth: cannot enter the build directory $4" >&2
			exit 126
		}
	fi
	_oomhint=${5-}
	_sh=$1
	if ! command -v "$_sh" >/dev/null 2>&1; then
		if [ "$_sh" = bash ]; then
			echo "berth: the image has no bash; running the script with sh" >&2
			_sh=sh
		else
			echo "berth: the image has no $_sh to run the script with" >&2
			exit 127
		fi
	fi
	# SIGTERM is meant for the script; the wrapper waits for it to end.
	trap : TERM
	berth_oom_kills
	_oom_before=$_oom
	"$_sh" "$2" </dev/null
	_rc=$?
	if [ -n "$_oomhint" ]; then
		berth_oom_kills
		if [ "$_oom" -gt "$_oom_before" ] 2>/dev/null; then
			echo "berth: the kernel killed a process of the step: the container ran out of memory ($_oomhint)" >&2
		fi
	fi
	rm -f "$2" "$3"
	berth_kill $$ $$ || echo "berth: processes the step left behind survive SIGKILL" >&2
	exit "$_rc"
}

berth_signal() {
	read -r _g 2>/dev/null <"$2" || exit 0 # the step has not started yet
	case $_g in '' | *[!0-9]*) exit 0 ;; esac
	if [ "$1" = KILL ]; then
		berth_kill "$_g" $$
		exit
	fi
	berth_signal_group "$1" "$_g" $$
	exit 0
}

case $1 in
run)
	shift
	berth_run "$@"
	;;
signal)
	shift
	berth_signal "$@"
	;;
*)
	echo "berth: unknown step wrapper mode $1" >&2
	exit 2
	;;
esac
