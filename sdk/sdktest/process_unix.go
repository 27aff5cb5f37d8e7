//go:build unix

package sdktest

import (
	"bytes"
	"errors"
	"os"
	"runtime"
	"strconv"
	"syscall"
)

// canSeeProcesses says whether processGone works on this system.
const canSeeProcesses = true

// processGone reports whether process pid has ended. A zombie has ended:
// it only waits to be reaped, which never happens to an orphan when PID 1
// does not reap (as in many containers).
func processGone(pid int) bool {
	err := syscall.Kill(pid, 0)
	if errors.Is(err, syscall.ESRCH) {
		return true
	}
	if runtime.GOOS != "linux" {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return errors.Is(err, os.ErrNotExist)
	}
	i := bytes.LastIndexByte(b, ')')
	f := bytes.Fields(b[i+1:])
	return len(f) > 0 && (string(f[0]) == "Z" || string(f[0]) == "X")
}

// killProcess kills a process a broken executor left behind.
func killProcess(pid int) { _ = syscall.Kill(pid, syscall.SIGKILL) }
