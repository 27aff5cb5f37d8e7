package shell

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// waitExited blocks until the process pid has exited, without reaping it:
// until it is reaped, its pid (and so its process group's id) cannot be
// given to another process.
func waitExited(pid int) error {
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

// signalGroup sends sig to every process of the group pgid.
func signalGroup(pgid int, sig syscall.Signal) error {
	err := syscall.Kill(-pgid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// groupAlive reports whether a process of group pgid is still running.
// Zombies do not count: they have ended and only wait to be reaped, which
// for orphans may never happen when PID 1 does not reap.
func groupAlive(pgid int) bool {
	if err := syscall.Kill(-pgid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return true // cannot tell: assume the worst
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		state, group, ok := procStat(pid)
		if ok && group == pgid && state != 'Z' && state != 'X' {
			return true
		}
	}
	return false
}

// procStat reads a process's state and process group from /proc.
func procStat(pid int) (state byte, pgid int, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, false
	}
	// pid (comm) state ppid pgrp …; comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 3 || len(f[0]) != 1 {
		return 0, 0, false
	}
	g, err := strconv.Atoi(string(f[2]))
	if err != nil {
		return 0, 0, false
	}
	return f[0][0], g, true
}

// waitGroupGone polls until no process of group pgid runs, or until
// deadline fires; it reports whether the group is gone.
func waitGroupGone(pgid int, deadline <-chan time.Time) bool {
	interval := time.Millisecond
	for groupAlive(pgid) {
		select {
		case <-deadline:
			return !groupAlive(pgid)
		case <-time.After(interval):
		}
		interval = min(2*interval, 50*time.Millisecond)
	}
	return true
}

// killJob kills the process groups of a job's running steps and waits
// until they are gone (or ctx ends, or killWait has passed).
func (e *Executor) killJob(ctx context.Context, jobID string) error {
	e.mu.Lock()
	var groups []int
	for g := range e.groups[jobID] {
		groups = append(groups, g)
	}
	e.mu.Unlock()
	deadline, cancel := context.WithTimeout(ctx, killWait)
	defer cancel()
	var errs []error
	for _, g := range groups {
		if err := signalGroup(g, syscall.SIGKILL); err != nil {
			errs = append(errs, fmt.Errorf("killing process group %d of job %q: %w", g, jobID, err))
			continue
		}
		if !waitGroupGone(g, ctxTimer(deadline)) {
			errs = append(errs, fmt.Errorf("process group %d of job %q still runs after SIGKILL", g, jobID))
		}
	}
	return errors.Join(errs...)
}

// ctxTimer turns a context's end into a channel of the kind timers give.
func ctxTimer(ctx context.Context) <-chan time.Time {
	c := make(chan time.Time, 1)
	context.AfterFunc(ctx, func() { c <- time.Now() })
	return c
}

func (e *Executor) track(jobID string, pgid int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.groups[jobID] == nil {
		e.groups[jobID] = map[int]struct{}{}
	}
	e.groups[jobID][pgid] = struct{}{}
}

func (e *Executor) untrack(jobID string, pgid int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.groups[jobID], pgid)
	if len(e.groups[jobID]) == 0 {
		delete(e.groups, jobID)
	}
}
