package sdktest

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
)

// recorder runs the suite in-process and records what fails instead of
// failing the real test. It embeds the real test only to satisfy
// testing.TB's unexported method; every method the suite and go-plugin's
// test helpers call is its own.
type recorder struct {
	testing.TB
	name   string
	report *report
	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.Mutex
	failed   bool
	skipped  bool
	cleanups []func()
}

// report collects the messages of the tests that failed, by name.
type report struct {
	mu       sync.Mutex
	messages map[string][]string
}

func newRecorder(t *testing.T) *recorder {
	ctx, cancel := context.WithCancel(t.Context())
	return &recorder{TB: t, name: "suite", report: &report{messages: map[string][]string{}}, ctx: ctx, cancel: cancel}
}

// failedTests lists the tests that failed themselves (not only through a
// subtest), without the "suite/" prefix.
func (r *recorder) failedTests() []string {
	r.report.mu.Lock()
	defer r.report.mu.Unlock()
	var names []string
	for n := range r.report.messages {
		names = append(names, strings.TrimPrefix(n, "suite/"))
	}
	slices.Sort(names)
	return names
}

func (r *recorder) String() string {
	r.report.mu.Lock()
	defer r.report.mu.Unlock()
	var b strings.Builder
	for n, msgs := range r.report.messages {
		for _, m := range msgs {
			fmt.Fprintf(&b, "%s: %.400s\n", n, m)
		}
	}
	return b.String()
}

func (r *recorder) Name() string             { return r.name }
func (r *recorder) Helper()                  {}
func (r *recorder) Context() context.Context { return r.ctx }
func (r *recorder) Log(args ...any)          {}
func (r *recorder) Logf(string, ...any)      {}

func (r *recorder) Fail() {
	r.mu.Lock()
	r.failed = true
	r.mu.Unlock()
}

func (r *recorder) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed
}

func (r *recorder) FailNow() {
	r.Fail()
	runtime.Goexit()
}

func (r *recorder) Error(args ...any) { r.record(fmt.Sprint(args...)) }
func (r *recorder) Errorf(format string, args ...any) {
	r.record(fmt.Sprintf(format, args...))
}
func (r *recorder) Fatal(args ...any) {
	r.record(fmt.Sprint(args...))
	runtime.Goexit()
}
func (r *recorder) Fatalf(format string, args ...any) {
	r.record(fmt.Sprintf(format, args...))
	runtime.Goexit()
}

func (r *recorder) record(msg string) {
	r.Fail()
	r.report.mu.Lock()
	r.report.messages[r.name] = append(r.report.messages[r.name], msg)
	r.report.mu.Unlock()
}

func (r *recorder) Skip(args ...any)     { r.SkipNow() }
func (r *recorder) Skipf(string, ...any) { r.SkipNow() }
func (r *recorder) SkipNow() {
	r.mu.Lock()
	r.skipped = true
	r.mu.Unlock()
	runtime.Goexit()
}

func (r *recorder) Skipped() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.skipped
}

func (r *recorder) Cleanup(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cleanups = append(r.cleanups, f)
}

func (r *recorder) TempDir() string {
	dir, err := os.MkdirTemp("", "sdktest-recorder-")
	if err != nil {
		r.Fatalf("TempDir: %v", err)
	}
	r.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// Run runs f as a subtest in a goroutine of its own, as testing does, so
// that FailNow and SkipNow end only the subtest.
func (r *recorder) Run(name string, f func(suiteT)) bool {
	ctx, cancel := context.WithCancel(r.ctx)
	child := &recorder{TB: r.TB, name: r.name + "/" + name, report: r.report, ctx: ctx, cancel: cancel}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer child.finish()
		f(child)
	}()
	<-done
	if child.Failed() {
		r.Fail()
	}
	return !child.Failed()
}

// finish ends a test as testing does: its context is cancelled, then its
// cleanups run, last first.
func (r *recorder) finish() {
	r.cancel()
	for {
		r.mu.Lock()
		n := len(r.cleanups)
		if n == 0 {
			r.mu.Unlock()
			return
		}
		f := r.cleanups[n-1]
		r.cleanups = r.cleanups[:n-1]
		r.mu.Unlock()
		func() {
			done := make(chan struct{})
			go func() { // a cleanup may call FailNow
				defer close(done)
				f()
			}()
			<-done
		}()
	}
}
