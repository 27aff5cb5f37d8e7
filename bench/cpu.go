package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"
)

// cpuTimes is CPU time (user + system) spent by the processes of one
// measurement: the host (this process), the plugin process, and the
// processes that did the actual work (the step's shell and head, which the
// plugin reaps; or, for a baseline, head, which this process reaps).
// Unlike wall time on a shared machine, it hardly depends on the load.
type cpuTimes struct {
	host, plugin, work time.Duration
}

func (c cpuTimes) total() time.Duration { return c.host + c.plugin + c.work }

func (c cpuTimes) add(o cpuTimes) cpuTimes {
	return cpuTimes{c.host + o.host, c.plugin + o.plugin, c.work + o.work}
}

func (c cpuTimes) sub(o cpuTimes) cpuTimes {
	return cpuTimes{c.host - o.host, c.plugin - o.plugin, c.work - o.work}
}

// cpuNow reads the CPU times so far. With pluginPid 0 there is no plugin,
// and work is what this process's reaped children used.
func cpuNow(pluginPid int) (cpuTimes, error) {
	var self, kids syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &self); err != nil {
		return cpuTimes{}, fmt.Errorf("getrusage: %w", err)
	}
	c := cpuTimes{host: tv(self.Utime) + tv(self.Stime)}
	if pluginPid == 0 {
		if err := syscall.Getrusage(syscall.RUSAGE_CHILDREN, &kids); err != nil {
			return cpuTimes{}, fmt.Errorf("getrusage: %w", err)
		}
		c.work = tv(kids.Utime) + tv(kids.Stime)
		return c, nil
	}
	own, reaped, err := procCPU(pluginPid)
	if err != nil {
		return cpuTimes{}, err
	}
	c.plugin, c.work = own, reaped
	return c, nil
}

func tv(t syscall.Timeval) time.Duration {
	return time.Duration(t.Sec)*time.Second + time.Duration(t.Usec)*time.Microsecond
}

// procCPU reads a process's own CPU time and that of its reaped children
// from /proc/PID/stat (in clock ticks, taken as 100 per second, the value
// on Linux for x86 and arm).
func procCPU(pid int) (own, reaped time.Duration, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, fmt.Errorf("reading the plugin's CPU time: %w", err)
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	// After "pid (comm)": state(3) … utime(14) stime(15) cutime(16) cstime(17).
	f := bytes.Fields(b[i+1:])
	if len(f) < 15 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	var ticks [4]int64
	for k := range ticks {
		if ticks[k], err = strconv.ParseInt(string(f[11+k]), 10, 64); err != nil {
			return 0, 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
	}
	const tick = 10 * time.Millisecond
	return time.Duration(ticks[0]+ticks[1]) * tick, time.Duration(ticks[2]+ticks[3]) * tick, nil
}

// cpuAcc adds up the CPU times of calls.
type cpuAcc struct {
	sum cpuTimes
	n   int
}

// mean is the CPU time of an average call.
func (a *cpuAcc) mean() cpuTimes {
	if a.n == 0 {
		return cpuTimes{}
	}
	n := time.Duration(a.n)
	return cpuTimes{a.sum.host / n, a.sum.plugin / n, a.sum.work / n}
}

// withCPU wraps a measured function so that it also adds the CPU times
// spent during each call to acc.
func withCPU(acc *cpuAcc, pluginPid int, f func() (time.Duration, error)) func() (time.Duration, error) {
	return func() (time.Duration, error) {
		before, err := cpuNow(pluginPid)
		if err != nil {
			return 0, err
		}
		d, err := f()
		if err != nil {
			return d, err
		}
		after, err := cpuNow(pluginPid)
		if err != nil {
			return 0, err
		}
		acc.sum = acc.sum.add(after.sub(before))
		acc.n++
		return d, nil
	}
}
