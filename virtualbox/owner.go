package virtualbox

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// owner is the process a VM belongs to: its pid and its start time (clock
// ticks after boot, from /proc; 0 where there is no /proc), so that a
// later process that got the same pid is not taken for it.
type owner struct {
	pid   int
	start uint64
}

func ownerOf(pid int) owner {
	start, _ := startTime(pid)
	return owner{pid: pid, start: start}
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

// running says whether the owner still runs. Where start times cannot be
// read, any process with the pid counts.
func (o owner) running() bool {
	if err := syscall.Kill(o.pid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	start, ok := startTime(o.pid)
	if !ok {
		_, err := os.Stat("/proc/self/stat")
		return err != nil // no /proc: trust kill
	}
	return start == o.start
}

// startTime reads a process's start time from /proc/<pid>/stat.
func startTime(pid int) (uint64, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, false
	}
	n, err := strconv.ParseUint(f[19], 10, 64)
	return n, err == nil
}
