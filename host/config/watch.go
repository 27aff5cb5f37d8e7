package config

import (
	"context"
	"log/slog"
	"os"
	"syscall"
	"time"
)

// fileState is what tells a changed file: size, modification time, inode.
type fileState struct {
	size  int64
	mtime time.Time
	ino   uint64
}

func stat(path string) (fileState, bool) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileState{}, false
	}
	st := fileState{size: fi.Size(), mtime: fi.ModTime()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.ino = sys.Ino
	}
	return st, true
}

// Watch reloads the config file when it changes (checked every interval)
// or when reload receives, until ctx ends. A file that loads is handed to
// apply; apply's error (e.g. an executor refusing its new settings) or a
// load error keeps the old config, logged with why. Warnings are logged.
func Watch(ctx context.Context, path string, interval time.Duration, reload <-chan struct{}, log *slog.Logger, apply func(*Config) error) {
	last, _ := stat(path)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		forced := false
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-reload:
			forced = true
		}
		cur, ok := stat(path)
		if !forced && (!ok || cur == last) {
			continue
		}
		last = cur
		c, warnings, err := Load(path)
		for _, w := range warnings {
			log.Warn(w)
		}
		if err != nil {
			log.Error("the changed config is not valid; keeping the old one", "config", path, "error", err)
			continue
		}
		if err := apply(c); err != nil {
			log.Error("the changed config cannot be applied; keeping the old one", "config", path, "error", err)
			continue
		}
		log.Info("config reloaded", "config", path, "runners", len(c.Runners))
	}
}
