//go:build linux

// Package proctree finds and stops the processes below a process on Linux,
// by reading every process's parent from /proc. It is how the berth
// function makes sure nothing a step started outlives the step (together
// with being a child subreaper, which keeps orphans below it), and how the
// tests stop everything an emulator started.
package proctree

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"
)

// Descendants returns the processes below pid that have not ended
// (zombies are left out: they have ended and only wait to be reaped).
func Descendants(pid int) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("listing processes: %w", err)
	}
	children := map[int][]int{}
	alive := map[int]bool{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		state, ppid, ok := stat(p)
		if !ok {
			continue // ended while we looked
		}
		children[ppid] = append(children[ppid], p)
		alive[p] = state != 'Z' && state != 'X'
	}
	var out []int
	queue := []int{pid}
	seen := map[int]bool{pid: true}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			if seen[c] {
				continue
			}
			seen[c] = true
			queue = append(queue, c)
			if alive[c] {
				out = append(out, c)
			}
		}
	}
	return out, nil
}

// stat reads a process's state and parent from /proc/<pid>/stat.
func stat(pid int) (state byte, ppid int, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, false
	}
	// pid (comm) state ppid …; comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 2 || len(f[0]) != 1 {
		return 0, 0, false
	}
	ppid, err = strconv.Atoi(string(f[1]))
	if err != nil {
		return 0, 0, false
	}
	return f[0][0], ppid, true
}

// KillBelow sends SIGKILL to every process below pid, again and again
// (a process may fork while it is being killed), until none is left or
// wait has passed. reap, when not nil, is called after each round to
// collect the children that died (a subreaper must reap its orphans). It
// returns an error naming the processes still there at the end.
func KillBelow(pid int, wait time.Duration, reap func()) error {
	deadline := time.Now().Add(wait)
	for {
		pids, err := Descendants(pid)
		if err != nil {
			return err
		}
		for _, p := range pids {
			if err := syscall.Kill(p, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				return fmt.Errorf("killing process %d: %w", p, err)
			}
		}
		if reap != nil {
			reap()
		}
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v still run %s after SIGKILL", pids, wait)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ReapOrphans collects every child of this process that has ended,
// without blocking. Call it only when no os/exec command of this process
// is still waiting to be waited for: it would take that child's status.
func ReapOrphans() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}

// BecomeSubreaper makes this process the reaper of its orphaned
// descendants (PR_SET_CHILD_SUBREAPER), so that a process a step leaves
// running in the background stays below it and can be found.
func BecomeSubreaper() error {
	const prSetChildSubreaper = 36
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
		return fmt.Errorf("becoming a child subreaper: %w", errno)
	}
	return nil
}
