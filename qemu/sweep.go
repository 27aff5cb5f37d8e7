package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// removeLeftovers kills the VMs and removes the job folders in overlayDir
// whose owner (the berth process that ran the job) no longer runs: what a
// berth that died left. A VM dies with its plugin, so normally only the
// folders are left; the pid file is checked all the same, in case the
// parent-death signal could not be delivered.
func (e *Executor) removeLeftovers(ctx context.Context, overlayDir string) error {
	entries, err := os.ReadDir(overlayDir)
	if err != nil {
		return fmt.Errorf("looking for leftovers in overlay_dir %s: %w", overlayDir, err)
	}
	var errs []error
	for _, entry := range entries {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		m := jobDirPattern.FindStringSubmatch(entry.Name())
		if m == nil || !entry.IsDir() {
			continue
		}
		o, err := parseOwner(m[1])
		if err != nil || o.running() {
			continue
		}
		dir := filepath.Join(overlayDir, entry.Name())
		e.logger().Info("qemu: removing a job's VM and overlay that a berth no longer running left", "dir", dir, "owner", m[1])
		if err := killFromPidFile(dir); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("removing a leftover job folder: %w", err))
		}
	}
	return errors.Join(errs...)
}
