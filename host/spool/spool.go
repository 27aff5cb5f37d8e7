// Package spool keeps each GitLab job's trace on disk until GitLab has
// acknowledged every byte of it and taken the job's final state, so that a
// GitLab outage loses nothing and a berth that died (or was killed) can
// send, when it starts again, what GitLab has not got.
//
// An entry is a folder <dir>/<job id>-<hash of the GitLab URL> holding the
// trace as the job wrote it (masked), meta.json (the GitLab URL, the job's
// ID and token, the final state once known), acked (how many trace bytes
// GitLab confirmed) and lock. The process that owns an entry holds an
// exclusive flock on its lock file, which the kernel releases when that
// process ends however it ends: an entry nobody holds is an orphan to
// resume. Entries hold job tokens: the folder is 0700, files 0600.
package spool

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Final is how a job ended, as reported to GitLab.
type Final struct {
	State         string `json:"state"`
	FailureReason string `json:"failure_reason,omitempty"`
	ExitCode      int    `json:"exit_code,omitempty"`
}

// Meta is what an entry knows about its job.
type Meta struct {
	URL     string    `json:"url"`
	JobID   int64     `json:"job_id"`
	Token   string    `json:"token"`
	Runner  string    `json:"runner,omitempty"`
	Created time.Time `json:"created"`
	// Final is set once the job ended.
	Final *Final `json:"final,omitempty"`
}

// Dir is a folder of entries.
type Dir struct {
	Path string
}

// Entry is one job's spooled trace. Write is safe to call concurrently
// with the other methods.
type Entry struct {
	dir  string
	lock *os.File

	mu    sync.Mutex
	trace *os.File
	meta  Meta
	size  int64
	crc   uint32
	acked int64
	err   error
}

func entryName(url string, id int64) string {
	sum := sha256.Sum256([]byte(url))
	return strconv.FormatInt(id, 10) + "-" + hex.EncodeToString(sum[:4])
}

// Create makes the entry of a job that starts now, locked by this process.
func (d Dir) Create(m Meta) (*Entry, error) {
	if err := os.MkdirAll(d.Path, 0o700); err != nil {
		return nil, fmt.Errorf("making the trace spool folder: %w", err)
	}
	dir := filepath.Join(d.Path, entryName(m.URL, m.JobID))
	// A leftover of the same job (GitLab handed it out again) is replaced.
	if _, err := os.Stat(dir); err == nil {
		if err := os.RemoveAll(dir); err != nil {
			return nil, fmt.Errorf("removing an old spool entry of job %d: %w", m.JobID, err)
		}
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, fmt.Errorf("making the spool entry of job %d: %w", m.JobID, err)
	}
	e := &Entry{dir: dir, meta: m}
	lock, err := lockFile(filepath.Join(dir, "lock"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("locking the spool entry of job %d: %w", m.JobID, err)
	}
	e.lock = lock
	if e.meta.Created.IsZero() {
		e.meta.Created = time.Now().UTC()
	}
	if err := e.saveMeta(); err != nil {
		e.Close()
		os.RemoveAll(dir)
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, "trace"), os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o600)
	if err != nil {
		e.Close()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("making the trace file of job %d: %w", m.JobID, err)
	}
	e.trace = f
	return e, nil
}

// errLocked is returned by lockFile when another process holds the lock.
var errLocked = errors.New("locked by another process")

func lockFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, errLocked
		}
		return nil, err
	}
	return f, nil
}

// Orphans opens, and locks, every entry no live process holds. Entries
// that cannot be read are reported in the error (and skipped); an entry
// whose creator died before it was complete is removed.
func (d Dir) Orphans() ([]*Entry, error) {
	names, err := os.ReadDir(d.Path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the trace spool folder: %w", err)
	}
	var out []*Entry
	var errs []error
	for _, n := range names {
		if !n.IsDir() {
			continue
		}
		dir := filepath.Join(d.Path, n.Name())
		lock, err := lockFile(filepath.Join(dir, "lock"))
		if errors.Is(err, errLocked) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("spool entry %s: %w", dir, err))
			continue
		}
		e, err := open(dir, lock)
		if err != nil {
			lock.Close()
			if errors.Is(err, os.ErrNotExist) {
				os.RemoveAll(dir)
				continue
			}
			errs = append(errs, fmt.Errorf("spool entry %s: %w", dir, err))
			continue
		}
		out = append(out, e)
	}
	return out, errors.Join(errs...)
}

func open(dir string, lock *os.File) (*Entry, error) {
	e := &Entry{dir: dir, lock: lock}
	data, err := os.ReadFile(filepath.Join(dir, "meta.json"))
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(data, &e.meta); err != nil {
		return nil, fmt.Errorf("meta.json: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "trace"), os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	h := crc32.NewIEEE()
	n, err := io.Copy(h, f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("reading the trace: %w", err)
	}
	e.trace, e.size, e.crc = f, n, h.Sum32()
	if b, err := os.ReadFile(filepath.Join(dir, "acked")); err == nil {
		if v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && v >= 0 && v <= n {
			e.acked = v
		}
	}
	return e, nil
}

// writeAtomic replaces a small file of the entry.
func (e *Entry) writeAtomic(name string, data []byte) error {
	tmp := filepath.Join(e.dir, name+".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(e.dir, name))
}

func (e *Entry) saveMeta() error {
	data, err := json.Marshal(e.meta)
	if err != nil {
		return err
	}
	if err := e.writeAtomic("meta.json", data); err != nil {
		return fmt.Errorf("saving the spool entry of job %d: %w", e.meta.JobID, err)
	}
	return nil
}

// Write appends p to the trace.
func (e *Entry) Write(p []byte) (int, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.err != nil {
		return 0, e.err
	}
	if e.trace == nil {
		return 0, fmt.Errorf("the spool entry of job %d is closed", e.meta.JobID)
	}
	n, err := e.trace.Write(p)
	e.size += int64(n)
	e.crc = crc32.Update(e.crc, crc32.IEEETable, p[:n])
	if err != nil {
		e.err = fmt.Errorf("spooling the trace of job %d: %w", e.meta.JobID, err)
		return n, e.err
	}
	return n, nil
}

// Size is how many trace bytes the entry holds.
func (e *Entry) Size() int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.size
}

// Summary returns the trace's checksum as GitLab wants it
// ("crc32:%08x") and its size.
func (e *Entry) Summary() (string, int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return fmt.Sprintf("crc32:%08x", e.crc), e.size
}

// ReadAt reads trace bytes from off.
func (e *Entry) ReadAt(p []byte, off int64) (int, error) {
	e.mu.Lock()
	f := e.trace
	e.mu.Unlock()
	if f == nil {
		return 0, fmt.Errorf("the spool entry of job %d is closed", e.meta.JobID)
	}
	return f.ReadAt(p, off)
}

// Meta returns a copy of the entry's meta data.
func (e *Entry) Meta() Meta {
	e.mu.Lock()
	defer e.mu.Unlock()
	m := e.meta
	if m.Final != nil {
		f := *m.Final
		m.Final = &f
	}
	return m
}

// Acked is how many bytes GitLab confirmed, as last saved.
func (e *Entry) Acked() int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.acked
}

// SetAcked saves how many bytes GitLab holds.
func (e *Entry) SetAcked(n int64) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if n == e.acked {
		return nil
	}
	e.acked = n
	return e.writeAtomic("acked", []byte(strconv.FormatInt(n, 10)))
}

// SetFinal saves how the job ended, durably: from now on a restart reports
// this state instead of a failure.
func (e *Entry) SetFinal(f Final) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.meta.Final = &f
	if e.trace != nil {
		_ = e.trace.Sync()
	}
	return e.saveMeta()
}

// Close releases the entry and keeps it on disk (for a later resume).
func (e *Entry) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	var err error
	if e.trace != nil {
		err = e.trace.Close()
		e.trace = nil
	}
	if e.lock != nil {
		e.lock.Close() // releases the flock
		e.lock = nil
	}
	return err
}

// Remove deletes the entry: GitLab has everything.
func (e *Entry) Remove() error {
	// Removed while still locked, so that no other process resumes it.
	err := os.RemoveAll(e.dir)
	e.Close()
	if err != nil {
		return fmt.Errorf("removing the spool entry of job %d: %w", e.meta.JobID, err)
	}
	return nil
}

// Path is the entry's folder.
func (e *Entry) Path() string { return e.dir }
