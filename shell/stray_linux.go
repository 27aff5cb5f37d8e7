package shell

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
)

// killStrays SIGKILLs every process whose environment marks it as one of
// jobID's. A process that changed its environment escapes this.
func killStrays(jobID string) error {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return fmt.Errorf("looking for leftover processes of job %q: %w", jobID, err)
	}
	marker := []byte(JobMarker + "=" + jobID + "\x00")
	self := os.Getpid()
	var errs []error
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err != nil || !(bytes.HasPrefix(env, marker) || bytes.Contains(env, append([]byte{0}, marker...))) {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("killing leftover process %d of job %q: %w", pid, jobID, err))
		}
	}
	return errors.Join(errs...)
}
