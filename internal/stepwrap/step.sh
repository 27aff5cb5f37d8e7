# berth's step wrapper for container executors (docker, kubernetes): it runs
# one step inside the job's container. The executor runs it with an exec:
#   sh -c 'BERTH_STEP_SH=$1; shift; eval "$BERTH_STEP_SH"' berth-step TEXT MODE ARGS…
# (stepwrap.Command builds that), so nothing has to be copied in first; or,
# when the container has this text in its environment as BERTH_STEP_SH,
#   sh -c 'eval "$BERTH_STEP_SH"' berth-step MODE ARGS…
# (stepwrap.CommandFromEnv), so that the exec's command line stays short.
#
#   run SHELL SCRIPT PIDFILE [DIR [OOMHINT [SIZE]]]
#       Saves stdin (the step's script) as SCRIPT, runs it with SHELL (in DIR,
#       created when missing, when given) and exits with its status. With
#       SIZE, a script of another size (a connection that broke while it
#       came) is not run: exit 126. The
#       wrapper is the leader of the step's process group and writes the
#       group's id to PIDFILE; what the step leaves running in the group is
#       killed when SHELL exits. With OOMHINT, a step whose processes the
#       kernel killed for lack of memory gets a line on stderr saying so,
#       ending with OOMHINT (which names the memory setting).
#   signal SIGNAL PIDFILE
#       Sends SIGNAL to the step's process group. KILL is repeated until
#       nothing of the group is left (about 10 s at most).
#   start SHELL SCRIPT PIDFILE DIR OOMHINT SIZE OUT [OUTBYTES ERRBYTES]
#       As run, but the step does not depend on this exec's connection: it
#       runs in the background with its stdout, stderr and exit status in
#       the files OUT.out, OUT.err and OUT.exit, which this exec then
#       follows (as `follow OUT 0 0`). When the connection breaks, the
#       executor sends the same start again (script and all: it cannot know
#       whether the step began). The first start of OUT whose script
#       arrived whole claims OUT (mkdir OUT.claim) and starts the step; any
#       later one follows it from OUTBYTES and ERRBYTES instead, so a step
#       runs once, nothing of its output is lost or repeated, and a break
#       while the script came costs nothing (an incomplete script claims
#       nothing: exit 126). Without tail, head and stat/wc in the image, the
#       claimer runs the step attached (not resumable: a later start finds
#       no output to follow, exit 125).
#   follow OUT OUTBYTES ERRBYTES
#       Copies OUT.out from byte OUTBYTES to stdout and OUT.err from
#       ERRBYTES to stderr as they grow, until OUT.exit appears and both are
#       copied whole, then exits with the status in OUT.exit. Exit 125 and a
#       line on stderr when OUT.* are not there.
#
# run and signal use shell builtins, /proc, mkdir, rm, sleep and cat (a
# slower loop without it) only, so that any image with a POSIX sh runs them.

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

# berth_save FILE: saves stdin as FILE, readable by its owner only.
berth_save() {
	if command -v cat >/dev/null 2>&1; then
		(umask 077 && exec cat >"$1")
	else
		(
			umask 077
			while IFS= read -r _l || [ -n "$_l" ]; do printf '%s\n' "$_l"; done >"$1"
		)
	fi
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
	berth_save "$2" || {
		echo "berth: cannot save the step's script as $2" >&2
		exit 126
	}
	if [ -n "${6-}" ]; then
		berth_size "$2"
		if [ "$_size" != "$6" ]; then
			echo "berth: the step's script arrived incomplete ($_size of $6 bytes); not running it" >&2
			rm -f "$2" "$3"
			exit 126
		fi
	fi
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

# berth_size FILE: sets _size to the size of FILE in bytes.
berth_size() {
	_size=$(stat -c %s "$1" 2>/dev/null) || _size=$(wc -c <"$1")
	_size=${_size##* }
}

# berth_copy FILE OFFSET: writes the bytes of FILE past OFFSET to stdout
# and sets _off to the size copied up to.
berth_copy() {
	berth_size "$1"
	_off=$2
	[ "$_size" -gt "$2" ] 2>/dev/null || return 0
	tail -c "+$(($2 + 1))" "$1" | head -c "$((_size - $2))"
	_off=$_size
}

berth_follow() {
	if [ ! -e "$1.out" ] || [ ! -e "$1.err" ]; then
		echo "berth: the step's output ($1.out, $1.err) is not there to resume" >&2
		exit 125
	fi
	_o=$2 _e=$3 _nap=0.01
	while :; do
		# The exit status first: once it is there, the step has written
		# everything, and this round copies the rest.
		_done=0
		[ -e "$1.exit" ] && _done=1
		berth_copy "$1.out" "$_o"
		_o=$_off
		berth_copy "$1.err" "$_e" >&2
		_e=$_off
		[ "$_done" = 1 ] && break
		# Naps of 10 ms growing to 160 ms: a short step ends soon, a long
		# one costs a few stats per second.
		sleep "$_nap" 2>/dev/null || sleep 1
		case $_nap in
		0.01) _nap=0.02 ;;
		0.02) _nap=0.04 ;;
		0.04) _nap=0.08 ;;
		*) _nap=0.16 ;;
		esac
	done
	read -r _rc <"$1.exit"
	exit "${_rc:-125}"
}

berth_start() {
	_out=$7
	_in="$2.in.$$"
	mkdir -p "${_out%/*}" || {
		echo "berth: cannot make the folder of the step's output files $_out.*" >&2
		exit 126
	}
	berth_save "$_in" || {
		rm -f "$_in"
		echo "berth: cannot save the step's script as $_in" >&2
		exit 126
	}
	berth_size "$_in"
	if [ "$_size" != "$6" ]; then
		rm -f "$_in"
		echo "berth: the step's script arrived incomplete ($_size of $6 bytes); not running it" >&2
		exit 126
	fi
	if ! mkdir "$_out.claim" 2>/dev/null; then
		# An earlier start of this step claimed it: follow that one, once
		# it has made the output files.
		rm -f "$_in"
		_n=0
		while [ ! -e "$_out.err" ] && [ "$_n" -lt 100 ]; do
			_n=$((_n + 1))
			sleep 0.05 2>/dev/null || sleep 1
		done
		berth_follow "$_out" "${8:-0}" "${9:-0}"
	fi
	if ! command -v tail >/dev/null 2>&1 || ! command -v head >/dev/null 2>&1 ||
		! { command -v stat >/dev/null 2>&1 || command -v wc >/dev/null 2>&1; }; then
		exec <"$_in"
		rm -f "$_in"
		berth_run "$1" "$2" "$3" "$4" "$5"
	fi
	# Only the running step's files are kept.
	for _f in "${_out%/*}"/*.claim; do
		[ "$_f" = "$_out.claim" ] || rmdir "$_f" 2>/dev/null
	done
	rm -f "${_out%/*}"/*.out "${_out%/*}"/*.err "${_out%/*}"/*.exit &&
		: >"$_out.out" && : >"$_out.err" && mv "$_in" "$2.in" || {
		echo "berth: cannot write the step's output files $_out.*" >&2
		rm -f "$_in"
		exit 126
	}
	# The step, detached from this exec: its own session (run makes it a
	# group leader), output into files, status written last.
	(
		sh -c 'BERTH_STEP_SH=$1; shift; eval "$BERTH_STEP_SH"' berth-step "$BERTH_STEP_SH" run "$1" "$2" "$3" "$4" "$5" "$6" \
			<"$2.in" >"$_out.out" 2>"$_out.err"
		echo "$?" >"$_out.exit.new"
		rm -f "$2.in"
		mv "$_out.exit.new" "$_out.exit"
	) </dev/null >/dev/null 2>&1 &
	berth_follow "$_out" 0 0
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
start)
	shift
	berth_start "$@"
	;;
follow)
	shift
	berth_follow "$@"
	;;
*)
	echo "berth: unknown step wrapper mode $1" >&2
	exit 2
	;;
esac
