package sshdtest

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// The helpers below are for the tests of sshexec and the executors on it,
// whose "remote host" (the test sshd, a fake or a QEMU VM's forwarder) is
// this machine.

// ProcessGone says whether the process pid of this machine has ended (a
// zombie has).
func ProcessGone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && (f[0] == "Z" || f[0] == "X")
}

// Watch is an io.Writer, safe for concurrent use, that collects what is
// written and tells when a text has come.
type Watch struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	want string
	seen chan struct{}
}

// NewWatch returns a Watch for the text want.
func NewWatch(want string) *Watch { return &Watch{want: want, seen: make(chan struct{})} }

// Write implements io.Writer.
func (w *Watch) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if w.want != "" && strings.Contains(w.buf.String(), w.want) {
		w.want = ""
		close(w.seen)
	}
	return len(p), nil
}

// Seen is closed once the text has been written.
func (w *Watch) Seen() <-chan struct{} { return w.seen }

// String returns what was written so far.
func (w *Watch) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}
