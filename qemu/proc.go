package qemu

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// procStat is what /proc/<pid>/stat says about a process.
type procStat struct {
	state byte
	pgrp  int
	// start is the process's start time in clock ticks after boot: with
	// the pid it names one process, whatever reuses the pid later.
	start uint64
}

func readStat(pid int) (procStat, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command name may hold spaces and parentheses
	if i < 0 {
		return procStat{}, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 || len(f[0]) != 1 {
		return procStat{}, false
	}
	pgrp, err1 := strconv.Atoi(f[2])
	start, err2 := strconv.ParseUint(f[19], 10, 64)
	if err1 != nil || err2 != nil {
		return procStat{}, false
	}
	return procStat{state: f[0][0], pgrp: pgrp, start: start}, true
}

// alive says whether the process runs. A zombie has ended (it only waits
// to be reaped, which may be late under a PID 1 that does not reap), but
// a multi-threaded process whose first thread is a zombie is still
// ending while its other threads exit: it holds its files (a VM's
// forwarded port) until the last one is gone.
func alive(pid int) bool {
	st, ok := readStat(pid)
	if !ok {
		return false
	}
	if st.state != 'Z' && st.state != 'X' {
		return true
	}
	tasks, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	return err == nil && len(tasks) > 1
}

// owner is the process a job's VM belongs to: its pid and start time.
type owner struct {
	pid   int
	start uint64
}

func ownerOf(pid int) owner {
	st, _ := readStat(pid)
	return owner{pid: pid, start: st.start}
}

func (o owner) String() string { return strconv.Itoa(o.pid) + "." + strconv.FormatUint(o.start, 10) }

func parseOwner(s string) (owner, error) {
	p, st, ok := strings.Cut(s, ".")
	pid, err1 := strconv.Atoi(p)
	start, err2 := strconv.ParseUint(st, 10, 64)
	if !ok || err1 != nil || err2 != nil || pid <= 0 {
		return owner{}, fmt.Errorf("%q is not an owner (pid.start)", s)
	}
	return owner{pid: pid, start: start}, nil
}

// running says whether the owner still runs: a process with its pid and
// its start time.
func (o owner) running() bool {
	st, ok := readStat(o.pid)
	return ok && st.start == o.start && alive(o.pid)
}

// isQEMUOf says whether pid is a running process whose command line
// names dir (every VM's overlay, pid file and logs are in its job's
// folder), and, when start is not 0, that started at start: the check
// before a pid read from a file or a handle is killed.
func isQEMUOf(pid int, start uint64, dir string) bool {
	if pid <= 1 {
		return false
	}
	st, ok := readStat(pid)
	if !ok || !alive(pid) || (start != 0 && st.start != start) {
		return false
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	for arg := range bytes.SplitSeq(cmdline, []byte{0}) {
		if bytes.Contains(arg, []byte(dir+"/")) {
			return true
		}
	}
	return false
}

// killWait bounds how long a killed VM may take to be gone.
const killWait = 30 * time.Second

// killProcess sends SIGKILL to a QEMU that this executor did not start
// (or no longer has in hand): to its process group when it leads one, as
// every VM does, and waits until it is gone.
func killProcess(pid int) error {
	target := pid
	if st, ok := readStat(pid); ok && st.pgrp == pid {
		target = -pid
	}
	if err := syscall.Kill(target, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("killing QEMU (pid %d): %w", pid, err)
	}
	deadline := time.Now().Add(killWait)
	for alive(pid) {
		if time.Now().After(deadline) {
			return fmt.Errorf("QEMU (pid %d) still runs %s after SIGKILL", pid, killWait)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}
