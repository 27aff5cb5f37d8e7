# berth's docker executor: runs one step inside the job's container. The
# executor passes this text in $BERTH_STEP_SH and runs
#   sh -c 'eval "$BERTH_STEP_SH"' berth-step MODE ARGS…
#
#   run SHELL SCRIPT PIDFILE
#       Saves standard input (the step's script) as SCRIPT, runs it with
#       SHELL and exits with its status. This shell leads the step's
#       process group (an exec'd process leads a session of its own); its
#       id goes to PIDFILE first. Once SHELL has exited, whatever the step
#       left running in the group is killed.
#   signal SIGNAL PIDFILE
#       Sends SIGNAL to every process of the step's group. With KILL it
#       repeats until none is left (about 10 s at most) and fails if one
#       still is.
#
# Only shell builtins, /proc, cat (or a slower loop without it) and sleep
# are used, so that any image with a POSIX sh can run it.

# signal_group SIGNAL GROUP SPARE: sends SIGNAL to each live process of
# process group GROUP except process SPARE; false when there was none.
signal_group() {
	_found=1
	for _f in /proc/[0-9]*/stat; do
		read -r _s 2>/dev/null <"$_f" || continue
		_p=${_f#/proc/}
		_p=${_p%/stat}
		[ "$_p" = "$3" ] && continue
		# After "PID (COMM) " come: state ppid pgrp …
		set -f
		# shellcheck disable=SC2086
		set -- "$1" "$2" "$3" ${_s##*") "}
		set +f
		if [ "$6" = "$2" ] && [ "$4" != Z ] && [ "$4" != X ]; then
			kill -s "$1" "$_p" 2>/dev/null
			_found=0
		fi
		set -- "$1" "$2" "$3"
	done
	return $_found
}

# kill_group GROUP SPARE: SIGKILLs group GROUP (but SPARE) until no live
# process of it is left; false if one still is after about 10 s.
kill_group() {
	_i=0
	while signal_group KILL "$1" "$2"; do
		_i=$((_i + 1))
		[ "$_i" -ge 100 ] && return 1
		sleep 0.1 2>/dev/null || sleep 1
	done
	return 0
}

run() {
	# A runtime that does not make an exec'd process a session leader:
	# setsid, when the image has it, gives the step a group of its own.
	read -r _s 2>/dev/null </proc/$$/stat
	set -f
	# shellcheck disable=SC2086
	set -- "$@" ${_s##*") "}
	set +f
	_pgrp=$6
	set -- "$1" "$2" "$3"
	if [ "$_pgrp" != "$$" ] && [ -z "${BERTH_SETSID-}" ] && command -v setsid >/dev/null 2>&1; then
		BERTH_SETSID=1 exec setsid sh -c 'eval "$BERTH_STEP_SH"' berth-step run "$@"
	fi
	unset BERTH_SETSID BERTH_STEP_SH
	[ "$_pgrp" = "$$" ] || echo "berth: the step has no process group of its own (no setsid in the image); a cancel stops only its shell" >&2

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
	# SIGTERM for the step is for the script: this shell waits for it.
	trap : TERM
	"$_sh" "$2" </dev/null
	_rc=$?
	kill_group "$$" "$$" || echo "berth: processes the step left behind survive SIGKILL" >&2
	exit "$_rc"
}

signal() {
	read -r _g 2>/dev/null <"$2" || exit 0 # not started yet
	case $_g in '' | *[!0-9]*) exit 0 ;; esac
	if [ "$1" = KILL ]; then
		kill_group "$_g" "$$"
		exit
	fi
	signal_group "$1" "$_g" "$$"
	exit 0
}

case $1 in
run)
	shift
	run "$@"
	;;
signal)
	shift
	signal "$@"
	;;
*)
	echo "berth: step.sh: unknown mode $1" >&2
	exit 2
	;;
esac
