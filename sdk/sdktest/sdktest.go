// Package sdktest is the conformance suite for berth executors. Call Run
// from a test in the executor's package:
//
//	func TestConformance(t *testing.T) {
//		sdktest.Run(t, func(t *testing.T) sdk.Executor { return myexecutor.New() },
//			sdktest.WithSettings(map[string]any{"builds_dir": t.TempDir()}))
//	}
//
// Every subtest serves a fresh executor over real gRPC in-process
// (go-plugin's TestPluginGRPCConn) and drives it through the *sdk.Client the
// host uses, so the protocol layer is tested along with the executor. The
// suite reads the executor's Capabilities and tests what they promise: a
// OneShot executor gets each job's steps in one RunSteps call, cancel tests
// expect SIGTERM before SIGKILL only with CancelGracefully, scripts are
// written for each promised shell. A OneShot executor returns a step's
// output only when the run ends and cannot stop a step it has handed over:
// the cancel and cleanup tests stop it without waiting for output, and do
// not look for the stopped step's processes. Checks that look at processes
// need the steps to run on this machine: pass LocalProcesses for that;
// without it they are skipped with a message saying so. An executor whose
// output has to fit a bounded result declares it with WithOutputLimit.
//
// Design: the subtests are written against a small interface (testing.TB
// plus Run with that interface), which *testing.T satisfies through an
// adapter. The suite's own tests drive it with a recorder that implements
// the same interface and captures failures in-process, so that they can
// feed it deliberately broken executors and assert that the suite fails
// them, in the subtest expected, without failing themselves.
package sdktest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-plugin"

	"github.com/berthci/berth/sdk"
)

// Option changes how the suite drives an executor.
type Option func(*config)

type config struct {
	settings map[string]any
	job      sdk.Job
	local    bool
	grace    time.Duration
	wait     time.Duration
	only     []string
	// outputLimit is how much of a step's output the executor delivers at
	// most (0: all of it).
	outputLimit int64
}

// WithSettings makes the suite Configure executors with settings.
func WithSettings(settings map[string]any) Option {
	return func(c *config) { c.settings = settings }
}

// WithJob makes job the template of every job the suite prepares (an Image
// for container executors, Labels, …). The suite sets ID, and Shell when
// the template has none.
func WithJob(job sdk.Job) Option { return func(c *config) { c.job = job } }

// LocalProcesses declares that the executor runs steps as processes of this
// machine, so that process IDs a script prints can be checked here: the
// suite then checks that cancelled and cleaned-up steps leave no process
// behind.
func LocalProcesses() Option { return func(c *config) { c.local = true } }

// WithGracePeriod sets the grace period of the cancelled step that ignores
// SIGTERM, which the suite waits out in full (default 3s).
func WithGracePeriod(d time.Duration) Option { return func(c *config) { c.grace = d } }

// WithWait bounds how long the suite waits for one executor call before it
// fails the test (default 3 minutes).
func WithWait(d time.Duration) Option { return func(c *config) { c.wait = d } }

// WithOutputLimit declares that the executor delivers at most n bytes of a
// step's output (as one whose results travel in one bounded response, such
// as a Lambda invocation's), and cuts a longer stream: it then ends with
// one line (of up to 1 KiB) saying what was dropped. The big-output test
// checks that at least half of n arrives intact before that line.
func WithOutputLimit(n int64) Option { return func(c *config) { c.outputLimit = n } }

// only restricts the suite to the named tests ("big_output",
// "cancel/term_ignored") and their subtests, for the suite's own tests.
func only(names ...string) Option { return func(c *config) { c.only = names } }

// suiteT is what the subtests need of a test.
type suiteT interface {
	testing.TB
	Run(name string, f func(t suiteT)) bool
}

// testingT adapts *testing.T to suiteT.
type testingT struct{ *testing.T }

func (t testingT) Run(name string, f func(suiteT)) bool {
	return t.T.Run(name, func(t *testing.T) { f(testingT{t}) })
}

// Run runs the conformance suite against executors newExecutor makes; it
// makes a fresh one for each subtest (two for the Cleanup-from-a-fresh-
// plugin test).
func Run(t *testing.T, newExecutor func(t *testing.T) sdk.Executor, opts ...Option) {
	run(testingT{t}, func(st suiteT) sdk.Executor { return newExecutor(st.(testingT).T) }, opts...)
}

type suite struct {
	cfg         config
	newExecutor func(suiteT) sdk.Executor
}

func run(t suiteT, newExecutor func(suiteT) sdk.Executor, opts ...Option) {
	s := &suite{cfg: config{grace: 3 * time.Second, wait: 3 * time.Minute}, newExecutor: newExecutor}
	for _, o := range opts {
		o(&s.cfg)
	}
	tests := []struct {
		name string
		f    func(suiteT)
	}{
		{"info", s.testInfo},
		{"config", s.testConfig},
		{"exit_codes", s.testExitCodes},
		{"stdout_stderr", s.testStreams},
		{"variables", s.testVariables},
		{"big_output", s.testBigOutput},
		{"batch", s.testBatch},
		{"background_process", s.testBackground},
		{"cancel", s.testCancel},
		{"timeout", s.testTimeout},
		{"isolation", s.testIsolation},
		{"upload_download", s.testFiles},
		{"cleanup", s.testCleanup},
	}
	for _, tt := range tests {
		if s.selected(tt.name) {
			t.Run(tt.name, tt.f)
		}
	}
}

// selected says whether the test at path ("cancel", "cancel/term_ignored")
// is to run: with no filter all are; otherwise those the filter names,
// their subtests and the tests on the way to them.
func (s *suite) selected(path string) bool {
	if len(s.cfg.only) == 0 {
		return true
	}
	for _, o := range s.cfg.only {
		if o == path || strings.HasPrefix(o, path+"/") || strings.HasPrefix(path, o+"/") {
			return true
		}
	}
	return false
}

// harness is one executor served over gRPC, configured, seen through the
// host's client.
type harness struct {
	t      suiteT
	cfg    *config
	c      *sdk.Client
	info   sdk.Info
	prefix string
	n      atomic.Int64
}

// connect serves a fresh executor and configures it. With configure false
// it only asks for Info.
func (s *suite) connect(t suiteT, configure bool) *harness {
	t.Helper()
	e := s.newExecutor(t)
	client, server := plugin.TestPluginGRPCConn(t, false, map[string]plugin.Plugin{
		sdk.PluginName: &sdk.GRPCPlugin{Impl: e},
	})
	t.Cleanup(func() {
		// Closing the client asks the server to stop (go-plugin's
		// controller); stopping it here as well would race with that.
		client.Close()
		select {
		case <-server.DoneCh:
		case <-time.After(10 * time.Second):
			server.Stop()
		}
	})
	raw, err := client.Dispense(sdk.PluginName)
	if err != nil {
		t.Fatalf("dispensing the executor: %v", err)
	}
	c, ok := raw.(*sdk.Client)
	if !ok {
		t.Fatalf("dispensing the executor gave a %T, want *sdk.Client", raw)
	}
	ctx, cancel := context.WithTimeout(t.Context(), s.cfg.wait)
	defer cancel()
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	if configure {
		if err := c.Configure(ctx, s.cfg.settings); err != nil {
			t.Fatalf("Configure with the suite's settings: %v", err)
		}
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return &harness{t: t, cfg: &s.cfg, c: c, info: info, prefix: "sdktest-" + hex.EncodeToString(b)}
}

// shells are the shells the executor promises; the first is its best.
func (h *harness) shells() []string {
	if len(h.info.Capabilities.Shells) == 0 {
		h.t.Fatalf("Info.Capabilities.Shells is empty: the executor promises no shell to run scripts with")
	}
	return h.info.Capabilities.Shells
}

// job returns a new job from the template, with a unique ID.
func (h *harness) job() sdk.Job {
	j := h.cfg.job
	j.ID = fmt.Sprintf("%s-%d", h.prefix, h.n.Add(1))
	if j.Name == "" {
		j.Name = "sdktest"
	}
	if j.Shell == "" {
		j.Shell = h.shells()[0]
	}
	return j
}

// ctx bounds one call.
func (h *harness) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(h.t.Context(), h.cfg.wait)
}

// prepare prepares job and cleans it up when the test ends.
func (h *harness) prepare(t suiteT, job sdk.Job) sdk.Handle {
	t.Helper()
	handle, err := h.tryPrepare(t, job)
	if err != nil {
		t.Fatal(err)
	}
	return handle
}

// step returns a step running script with shell.
func (h *harness) step(name, shell, script string) sdk.Step {
	return sdk.Step{Name: name, Script: script, Shell: shell, GracePeriod: h.cfg.grace}
}

// runSteps runs steps in one call and fails the test if the run does not
// end within the suite's wait.
func (h *harness) runSteps(t suiteT, handle sdk.Handle, steps []sdk.Step, outs []sdk.Output) []sdk.StepResult {
	t.Helper()
	res, err := h.tryRunSteps(handle, steps, outs)
	if err != nil {
		t.Fatalf("running steps: %v", err)
	}
	return res
}

// tryPrepare prepares job and cleans it up when the test ends; unlike
// prepare it may be called outside the test's goroutine.
func (h *harness) tryPrepare(t suiteT, job sdk.Job) (sdk.Handle, error) {
	ctx, cancel := h.ctx()
	defer cancel()
	handle, err := h.c.Prepare(ctx, job)
	if err != nil {
		return handle, fmt.Errorf("Prepare job %q: %w", job.ID, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), h.cfg.wait)
		defer cancel()
		if err := h.c.Cleanup(ctx, handle); err != nil {
			t.Errorf("Cleanup job %q: %v", job.ID, err)
		}
	})
	return handle, nil
}

// tryRunSteps is runSteps for use outside the test's goroutine.
func (h *harness) tryRunSteps(handle sdk.Handle, steps []sdk.Step, outs []sdk.Output) ([]sdk.StepResult, error) {
	ctx, cancel := h.ctx()
	defer cancel()
	res, err := h.c.RunSteps(ctx, handle, steps, func(i int) sdk.Output { return outs[i] })
	switch {
	case err != nil:
		return nil, err
	case ctx.Err() != nil:
		return nil, fmt.Errorf("the steps did not end within %s", h.cfg.wait)
	case len(res) != len(steps):
		return nil, fmt.Errorf("RunSteps returned %d results for %d steps", len(res), len(steps))
	}
	return res, nil
}
