package sdktest

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/berthci/berth/sdk"
)

func (s *suite) testInfo(t suiteT) {
	h := s.connect(t, false)
	i := h.info
	if i.Name == "" || i.Version == "" {
		t.Errorf("Info has name %q and version %q; both must be set", i.Name, i.Version)
	}
	if i.ProtocolVersion != sdk.ProtocolVersion {
		t.Errorf("Info.ProtocolVersion is %d over gRPC, want %d", i.ProtocolVersion, sdk.ProtocolVersion)
	}
	for _, sh := range h.shells() {
		if sh != "bash" && sh != "sh" {
			t.Errorf("Info.Capabilities.Shells holds %q; the host generates scripts for bash and sh only", sh)
		}
	}
	types := []string{sdk.FieldString, sdk.FieldBool, sdk.FieldInt, sdk.FieldFloat, sdk.FieldDuration, sdk.FieldSize, sdk.FieldList, sdk.FieldMap}
	seen := map[string]bool{}
	for _, f := range i.Config {
		if f.Name == "" || seen[f.Name] {
			t.Errorf("Info.Config has an empty or repeated setting name %q", f.Name)
		}
		seen[f.Name] = true
		if !slices.Contains(types, f.Type) {
			t.Errorf("setting %q has type %q, not one of %v", f.Name, f.Type, types)
		}
	}
}

func (s *suite) testConfig(t suiteT) {
	h := s.connect(t, false)
	ctx, cancel := h.ctx()
	defer cancel()
	with := func(k string, v any) map[string]any {
		m := map[string]any{k: v}
		for key, val := range s.cfg.settings {
			if key != k {
				m[key] = val
			}
		}
		return m
	}
	t.Run("unknown_key", func(t suiteT) {
		err := h.c.Configure(ctx, with("no_such_setting_xyz", 1))
		if err == nil || !strings.Contains(err.Error(), "no_such_setting_xyz") {
			t.Errorf("Configure with the unknown setting no_such_setting_xyz returned %v; want an error naming it", err)
		}
	})
	t.Run("wrong_type", func(t suiteT) {
		var field *sdk.ConfigField
		for i, f := range h.info.Config {
			switch f.Type {
			case sdk.FieldBool, sdk.FieldInt, sdk.FieldFloat, sdk.FieldDuration, sdk.FieldSize:
				field = &h.info.Config[i]
			}
		}
		if field == nil {
			t.Skip("the executor has no setting of type bool, int, float, duration or size to give a wrong value")
		}
		err := h.c.Configure(ctx, with(field.Name, "sdktest: not a value"))
		if err == nil || !strings.Contains(err.Error(), field.Name) {
			t.Errorf("Configure with %s = %q (a %s setting) returned %v; want an error naming it", field.Name, "sdktest: not a value", field.Type, err)
		}
	})
	t.Run("good_after_bad", func(t suiteT) {
		if err := h.c.Configure(ctx, s.cfg.settings); err != nil {
			t.Errorf("Configure with the suite's settings after refused ones: %v", err)
		}
	})
}

func (s *suite) testExitCodes(t suiteT) {
	h := s.connect(t, true)
	cases := []struct {
		name, script string
		want         int
	}{
		{"0", "exit 0", 0},
		{"1", "exit 1", 1},
		{"7", "exit 7", 7},
		{"SIGKILL", "kill -9 $$; sleep 5", 137},
		{"fall_off_end", "true", 0},
	}
	for _, sh := range h.shells() {
		t.Run(sh, func(t suiteT) {
			handle := h.prepare(t, h.job())
			steps := make([]sdk.Step, len(cases))
			for i, c := range cases {
				steps[i] = h.step(c.name, sh, c.script)
				steps[i].When = sdk.Always
			}
			outs, stdout, stderr := outputs(len(steps))
			res := h.runSteps(t, handle, steps, outs)
			for i, c := range cases {
				t.Run(c.name, func(t suiteT) {
					r := res[i]
					if r.Err != nil || r.Skipped || r.Canceled || r.TimedOut || r.ExitCode != c.want {
						t.Errorf("script %q ended with %+v (stdout %q, stderr %q); want exit code %d and no system error",
							c.script, r, stdout[i], stderr[i], c.want)
					}
				})
			}
		})
	}
}

func (s *suite) testStreams(t suiteT) {
	h := s.connect(t, true)
	const n = 2000
	script := `i=1
while [ $i -le ` + fmt.Sprint(n) + ` ]; do
  printf 'out %d\n' $i
  printf 'err %d\n' $i >&2
  i=$((i+1))
done`
	handle := h.prepare(t, h.job())
	outs, stdout, stderr := outputs(1)
	res := h.runSteps(t, handle, []sdk.Step{h.step("streams", h.shells()[0], script)}, outs)
	if r := res[0]; r.Err != nil || r.ExitCode != 0 {
		t.Fatalf("the step ended with %+v; stderr %.200q", r, stderr[0])
	}
	var wantOut, wantErr strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&wantOut, "out %d\n", i)
		fmt.Fprintf(&wantErr, "err %d\n", i)
	}
	if got := stdout[0].String(); got != wantOut.String() {
		t.Errorf("stdout is not the %d lines written to it in order: %s", n, firstDiff(got, wantOut.String()))
	}
	if got := stderr[0].String(); got != wantErr.String() {
		t.Errorf("stderr is not the %d lines written to it in order: %s", n, firstDiff(got, wantErr.String()))
	}
}

// variableValues are values that are hard to carry through a script.
var variableValues = []string{
	"plain",
	"",
	"two\nlines",
	"trailing newlines\n\n",
	"it's",
	"'",
	`'\''`,
	`say "hi"`,
	`$HOME ${PATH} $(echo no) ` + "`echo no`" + ` $$ $1 $@ \$`,
	`back\slash \\ \n \t \0 \`,
	"tab\there\rcarriage",
	"  leading and trailing spaces  ",
	"unicode: héllo ✓ 日本語 🚀 \u00a0\u200b",
	"* ? [a-z] ~ # ; & | < > ( ) { } !",
	strings.Repeat("long value ", 1000),
	"no newline at the end",
}

func (s *suite) testVariables(t suiteT) {
	h := s.connect(t, true)
	var script, want strings.Builder
	for i, v := range variableValues {
		fmt.Fprintf(&script, "export SDKTEST_VAR_%d=%s\n", i, quote(v))
		want.WriteString(v + "\x00")
	}
	for i := range variableValues {
		fmt.Fprintf(&script, "printf '%%s\\000' \"$SDKTEST_VAR_%d\"\n", i)
	}
	for _, sh := range h.shells() {
		t.Run(sh, func(t suiteT) {
			handle := h.prepare(t, h.job())
			outs, stdout, stderr := outputs(1)
			res := h.runSteps(t, handle, []sdk.Step{h.step("variables", sh, script.String())}, outs)
			if r := res[0]; r.Err != nil || r.ExitCode != 0 {
				t.Fatalf("the step ended with %+v; stderr %.300q", r, stderr[0])
			}
			got := strings.Split(stdout[0].String(), "\x00")
			wantParts := strings.Split(want.String(), "\x00")
			if len(got) != len(wantParts) {
				t.Fatalf("the script printed %d values, want %d: %.300q", len(got)-1, len(wantParts)-1, stdout[0])
			}
			for i := range variableValues {
				if got[i] != wantParts[i] {
					t.Errorf("variable SDKTEST_VAR_%d came out as %.100q, want %.100q", i, got[i], wantParts[i])
				}
			}
		})
	}
}

// bigOutputSize is how much the big-output test writes.
const bigOutputSize = 100 << 20

func (s *suite) testBigOutput(t suiteT) {
	h := s.connect(t, true)
	handle := h.prepare(t, h.job())
	check := newStreamCheck(io.LimitReader(&seqReader{}, bigOutputSize))
	stderr := newCapture("")
	script := fmt.Sprintf("seq 1 %d | head -c %d\necho done >&2", bigOutputSize/6, bigOutputSize)
	start := time.Now()
	res := h.runSteps(t, handle, []sdk.Step{h.step("big output", h.shells()[0], script)},
		[]sdk.Output{{Stdout: check, Stderr: stderr}})
	elapsed := time.Since(start)
	if r := res[0]; r.Err != nil || r.ExitCode != 0 {
		t.Fatalf("the step ended with %+v; stderr %.300q", r, stderr)
	}
	n, mismatch, sum := check.result()
	if limit := s.cfg.outputLimit; limit > 0 && limit < bigOutputSize {
		checkCut(t, n, mismatch, check.afterMismatch(), limit)
	} else if n != bigOutputSize || mismatch >= 0 {
		t.Errorf("stdout has %d bytes (sha256 %s), want %d; first difference at byte %d (-1: none)", n, sum, bigOutputSize, mismatch)
	}
	if got := stderr.String(); got != "done\n" {
		t.Errorf("stderr is %.200q, want %q", got, "done\n")
	}
	t.Logf("%d MiB of output in %s (%.0f MiB/s)", bigOutputSize>>20, elapsed.Round(time.Millisecond), float64(bigOutputSize>>20)/elapsed.Seconds())
}

// checkCut checks a stream the executor had to cut at limit bytes: a
// correct prefix of at least half the limit, then one line saying what was
// dropped, and no more than the limit in all.
func checkCut(t suiteT, n, mismatch int64, rest []byte, limit int64) {
	if mismatch < 0 {
		t.Errorf("stdout has %d correct bytes and no line saying it was cut; the executor declares an output limit of %d bytes", n, limit)
		return
	}
	line, _ := bytes.CutPrefix(rest, []byte("\n"))
	switch {
	case mismatch < limit/2:
		t.Errorf("stdout is correct for only %d bytes, less than half the executor's output limit of %d; then %.200q", mismatch, limit, rest)
	case n > limit+1024:
		t.Errorf("stdout has %d bytes, more than the executor's output limit of %d and one line", n, limit)
	case int64(len(rest)) != n-mismatch || len(line) > 1024 || len(line) < 2 ||
		line[len(line)-1] != '\n' || bytes.Count(line, []byte("\n")) != 1:
		t.Errorf("stdout is cut after %d correct bytes but then is not one line saying so: %.300q (%d bytes)", mismatch, rest, n-mismatch)
	default:
		t.Logf("stdout cut after %d bytes with: %q", mismatch, line)
	}
}

func (s *suite) testBatch(t suiteT) {
	h := s.connect(t, true)
	handle := h.prepare(t, h.job())
	sh := h.shells()[0]
	steps := []sdk.Step{
		h.step("fails", sh, "echo first; exit 3"),
		h.step("skipped", sh, "echo second"),
		h.step("always", sh, "echo third"),
	}
	steps[2].When = sdk.Always
	outs, stdout, _ := outputs(len(steps))
	res := h.runSteps(t, handle, steps, outs)
	if r := res[0]; r.ExitCode != 3 || r.Err != nil || r.Skipped || stdout[0].String() != "first\n" {
		t.Errorf("step 1 (exit 3) ended with %+v and stdout %q", r, stdout[0])
	}
	if r := res[1]; !r.Skipped || stdout[1].String() != "" {
		t.Errorf("step 2 (on success, after a failure) ended with %+v and stdout %q; want it skipped", r, stdout[1])
	}
	if r := res[2]; r.ExitCode != 0 || r.Err != nil || r.Skipped || stdout[2].String() != "third\n" {
		t.Errorf("step 3 (always) ended with %+v and stdout %q; want it run", r, stdout[2])
	}
}

// cancelScripts. Each prints "pids" with the process IDs it started, then
// "ready", then waits to be stopped.
const (
	// termTrapped cleans up for a while on SIGTERM, then exits.
	termTrapped = `trap 'echo "got TERM"; sleep 1; echo "cleaned up"; exit 3' TERM
sleep 1000 &
echo "pids $$ $!"
echo ready
wait
echo "wait returned without a signal"`
	// termIgnored notes SIGTERM and goes on; its background process ignores
	// SIGTERM altogether. Only SIGKILL stops them. It waits with the wait
	// builtin, which a trapped signal interrupts: a shell runs its trap only
	// after a foreground command ends, and a SIGTERM that lands between fork
	// and exec of a foreground sleep is taken by the forked shell's handler
	// and lost, so the sleep never ends and the trap never runs (measured:
	// 2 in 3 signals sent right after "ready" were lost that way, in dash
	// and bash alike).
	termIgnored = `trap 'echo "got TERM"' TERM
(trap '' TERM; exec sleep 1000) &
echo "pids $$ $!"
echo ready
while :; do sleep 1000 & wait $!; done`
)

// startAndStop runs step, waits until it printed "ready", then calls stop
// and waits for the run to end.
func (h *harness) startAndStop(t suiteT, handle sdk.Handle, step sdk.Step, stop func(cancel context.CancelFunc)) (sdk.StepResult, *capture, *capture) {
	t.Helper()
	stdout, stderr := newCapture("ready\n"), newCapture("")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	type outcome struct {
		res []sdk.StepResult
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := h.c.RunSteps(ctx, handle, []sdk.Step{step}, func(int) sdk.Output { return sdk.Output{Stdout: stdout, Stderr: stderr} })
		done <- outcome{res, err}
	}()
	ready := stdout.seen
	if h.info.Capabilities.OneShot {
		// Its output comes only at the end: give the run time to start
		// instead of waiting for "ready".
		ready = make(chan struct{})
		time.AfterFunc(oneShotStart, func() { close(ready) })
	}
	select {
	case <-ready:
	case o := <-done:
		t.Fatalf("the step ended before it printed ready: %+v %v; stdout %q, stderr %q", o.res, o.err, stdout, stderr)
	case <-time.After(h.cfg.wait):
		cancel()
		<-done
		t.Fatalf("the step did not print ready within %s; stdout %q, stderr %q", h.cfg.wait, stdout, stderr)
	}
	stop(cancel)
	// The client itself gives up on a plugin grace + sdk.StopSlack after a
	// cancel; this only guards against a hang in the client.
	bound := step.GracePeriod + sdk.StopSlack + h.cfg.wait
	select {
	case o := <-done:
		if o.err != nil {
			t.Fatalf("RunSteps: %v", o.err)
		}
		if len(o.res) != 1 {
			t.Fatalf("RunSteps returned %d results for 1 step", len(o.res))
		}
		return o.res[0], stdout, stderr
	case <-time.After(bound):
		t.Fatalf("RunSteps did not return within %s after the step was stopped", bound)
	}
	panic("unreachable")
}

// oneShotStart is how long the suite lets a OneShot executor's run start
// before it stops it (it has no output to wait for).
const oneShotStart = time.Second

// checkStoppedGone is checkGone for a step that was stopped (cancelled,
// cleaned up) while it ran. A OneShot executor cannot stop a step it has
// handed over: its environment ends it later, so there is nothing to check
// yet.
func (h *harness) checkStoppedGone(t suiteT, out string) {
	if h.info.Capabilities.OneShot {
		t.Run("no_process_left", func(t suiteT) {
			t.Skip("a OneShot executor cannot stop a step it has handed over; its environment stops it")
		})
		return
	}
	h.checkGone(t, out)
}

// checkGone checks, in a subtest, that the processes a script reported
// are gone.
func (h *harness) checkGone(t suiteT, out string) {
	t.Run("no_process_left", func(t suiteT) {
		switch {
		case !h.cfg.local:
			t.Skip("the executor's processes may not run on this machine; pass sdktest.LocalProcesses() to check that none is left behind")
		case !canSeeProcesses:
			t.Skip("cannot check for processes on " + runtime.GOOS)
		}
		pids := pidsIn(out)
		if len(pids) == 0 {
			t.Fatalf("the script printed no pids: %q", out)
		}
		for _, pid := range pids {
			if !processGone(pid) {
				t.Errorf("process %d of the step still runs after the run ended", pid)
				killProcess(pid) // do not leave it to the machine
			}
		}
	})
}

// A background process a script leaves behind must not keep the step
// running, nor outlive it (gitlab-runner issue 2880).
func (s *suite) testBackground(t suiteT) {
	h := s.connect(t, true)
	handle := h.prepare(t, h.job())
	outs, stdout, stderr := outputs(1)
	res := h.runSteps(t, handle, []sdk.Step{h.step("background", h.shells()[0], "sleep 1000 &\necho \"pids $!\"\necho done")}, outs)
	out := stdout[0].String()
	if r := res[0]; r.Err != nil || r.ExitCode != 0 || !strings.HasSuffix(out, "done\n") {
		t.Errorf("the step ended with %+v, stdout %q, stderr %q; want exit code 0", r, out, stderr[0])
	}
	h.checkGone(t, out)
}

func (s *suite) testCancel(t suiteT) {
	h := s.connect(t, true)
	graceful := h.info.Capabilities.CancelGracefully
	sh := h.shells()[0]
	t.Run("term_trapped", func(t suiteT) {
		if !s.selected("cancel/term_trapped") {
			t.Skip("not selected")
		}
		if !graceful {
			t.Skip("the executor does not promise CancelGracefully (SIGTERM, then SIGKILL after the grace period)")
		}
		handle := h.prepare(t, h.job())
		step := h.step("trapped", sh, termTrapped)
		step.GracePeriod = 30 * time.Second // the trap ends the script long before
		r, stdout, stderr := h.startAndStop(t, handle, step, func(cancel context.CancelFunc) { cancel() })
		if !r.Canceled || r.Err != nil || r.Skipped {
			t.Errorf("the cancelled step ended with %+v; want Canceled and no system error", r)
		}
		out := stdout.String()
		if !strings.Contains(out, "got TERM") || !strings.Contains(out, "cleaned up") {
			t.Errorf("the step's TERM trap did not run to its end within the grace period: stdout %q, stderr %q", out, stderr)
		}
		h.checkStoppedGone(t, out)
	})
	t.Run("term_ignored", func(t suiteT) {
		if !s.selected("cancel/term_ignored") {
			t.Skip("not selected")
		}
		handle := h.prepare(t, h.job())
		r, stdout, stderr := h.startAndStop(t, handle, h.step("ignores TERM", sh, termIgnored), func(cancel context.CancelFunc) { cancel() })
		if !r.Canceled || r.Err != nil || r.Skipped {
			t.Errorf("the cancelled step ended with %+v; want Canceled and no system error (stderr %q)", r, stderr)
		}
		out := stdout.String()
		if graceful && !strings.Contains(out, "got TERM") {
			t.Errorf("the step got no SIGTERM before it was killed: stdout %q, stderr %q", out, stderr)
		}
		h.checkStoppedGone(t, out)
	})
}

func (s *suite) testTimeout(t suiteT) {
	h := s.connect(t, true)
	handle := h.prepare(t, h.job())
	step := h.step("times out", h.shells()[0], "echo started; sleep 1000")
	step.Timeout = time.Second
	outs, stdout, stderr := outputs(1)
	res := h.runSteps(t, handle, []sdk.Step{step}, outs)
	if r := res[0]; !r.TimedOut || r.Canceled || r.Err != nil {
		t.Errorf("a step past its timeout ended with %+v; want TimedOut and no system error (stdout %q, stderr %q)", r, stdout[0], stderr[0])
	}
}

func (s *suite) testIsolation(t suiteT) {
	h := s.connect(t, true)
	const jobs = 8
	sh := h.shells()[0]
	write := func(i int) sdk.Step {
		return h.step("write", sh, fmt.Sprintf(`export SDKTEST_ISO_%d=%s
printf '%%s' "$SDKTEST_ISO_%d" > sdktest-iso-%d.txt`, i, quote(fmt.Sprintf("secret of job %d", i)), i, i))
	}
	check := h.step("check", sh, `for f in sdktest-iso-*.txt; do [ -e "$f" ] && echo "file $f"; done
for n in 0 1 2 3 4 5 6 7; do eval "v=\${SDKTEST_ISO_$n-}"; [ -n "$v" ] && echo "variable $n"; done
echo end`)

	handles := make([]sdk.Handle, jobs)
	checkOut := make([]*capture, jobs)
	// Each phase runs the jobs concurrently; with a step-by-step executor
	// every job has written before any checks, so a leak cannot hide.
	phase := func(name string, f func(i int) error) {
		var wg sync.WaitGroup
		errs := make([]error, jobs)
		for i := range jobs {
			wg.Go(func() { errs[i] = f(i) })
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	phase("prepare", func(i int) error {
		var err error
		handles[i], err = h.tryPrepare(t, h.job())
		return err
	})
	run := func(i int, steps ...sdk.Step) error {
		outs, stdout, stderr := outputs(len(steps))
		checkOut[i] = stdout[len(steps)-1]
		res, err := h.tryRunSteps(handles[i], steps, outs)
		if err != nil {
			return fmt.Errorf("job %d: %w", i, err)
		}
		for k, r := range res {
			if r.Err != nil || r.ExitCode != 0 {
				return fmt.Errorf("job %d step %q ended with %+v; stderr %q", i, steps[k].Name, r, stderr[k])
			}
		}
		return nil
	}
	if h.info.Capabilities.OneShot {
		phase("run", func(i int) error { return run(i, write(i), check) })
	} else {
		phase("write", func(i int) error { return run(i, write(i)) })
		phase("check", func(i int) error { return run(i, check) })
	}
	for i := range jobs {
		got := checkOut[i].String()
		// A job may still see its own variable; never another's.
		got = strings.Replace(got, fmt.Sprintf("variable %d\n", i), "", 1)
		if want := fmt.Sprintf("file sdktest-iso-%d.txt\nend\n", i); got != want {
			t.Errorf("job %d sees %q, want only its own file (%q)", i, got, want)
		}
	}
}

// file is a tar entry as the upload/download test sees it.
type file struct {
	typ  byte
	mode int64
	body string // contents, or the target of a link
}

func (f file) String() string {
	return fmt.Sprintf("type %q mode %#o %q", f.typ, f.mode, f.body)
}

func (s *suite) testFiles(t suiteT) {
	h := s.connect(t, true)
	job := h.job()
	job.DownloadPaths = []string{"in", "made", "no/such/path"}
	handle := h.prepare(t, job)
	upload := map[string]file{
		"art":        {tar.TypeDir, 0o755, ""},
		"art/run.sh": {tar.TypeReg, 0o755, "#!/bin/sh\necho hello from run.sh\n"},
		"art/secret": {tar.TypeReg, 0o600, "s3cret"},
		"art/link":   {tar.TypeSymlink, 0o777, "run.sh"},
		"art/abs":    {tar.TypeSymlink, 0o777, "/sdktest/no/such/target"},
	}
	ctx, cancel := h.ctx()
	defer cancel()
	if err := h.c.Upload(ctx, handle, "in", bytes.NewReader(tarOf(t, upload))); err != nil {
		t.Fatalf("Upload: %v", err)
	}
	t.Run("refuses_escape", func(t suiteT) {
		evil := map[string]file{"../sdktest-escaped": {tar.TypeReg, 0o644, "x"}}
		if err := h.c.Upload(ctx, handle, "", bytes.NewReader(tarOf(t, evil))); err == nil {
			t.Errorf("Upload of an entry named ../sdktest-escaped succeeded; want an error")
		}
		if err := h.c.Upload(ctx, handle, "../sdktest-escaped-dir", bytes.NewReader(tarOf(t, upload))); err == nil {
			t.Errorf("Upload into ../sdktest-escaped-dir succeeded; want an error")
		}
	})
	outs, stdout, stderr := outputs(1)
	res := h.runSteps(t, handle, []sdk.Step{h.step("files", h.shells()[0], `./in/art/run.sh
mkdir -p made/sub
printf x > made/sub/file
chmod 640 made/sub/file
ln -s sub/file made/link`)}, outs)
	if r := res[0]; r.Err != nil || r.ExitCode != 0 || stdout[0].String() != "hello from run.sh\n" {
		t.Fatalf("the step running the uploaded script ended with %+v, stdout %q, stderr %q", r, stdout[0], stderr[0])
	}
	var buf bytes.Buffer
	if err := h.c.Download(ctx, handle, job.DownloadPaths, &buf); err != nil {
		t.Fatalf("Download: %v", err)
	}
	got, err := untar(&buf)
	if err != nil {
		t.Fatalf("the downloaded archive: %v", err)
	}
	want := map[string]file{
		"in":            {tar.TypeDir, 0, ""},
		"made":          {tar.TypeDir, 0, ""},
		"made/sub":      {tar.TypeDir, 0, ""},
		"made/sub/file": {tar.TypeReg, 0o640, "x"},
		"made/link":     {tar.TypeSymlink, 0, "sub/file"},
	}
	for name, f := range upload {
		if f.typ == tar.TypeSymlink {
			f.mode = 0 // link modes mean nothing on Linux
		}
		want["in/"+name] = f
	}
	for name, w := range want {
		g, ok := got[name]
		if w.typ == tar.TypeDir || w.typ == tar.TypeSymlink {
			g.mode = w.mode
		}
		if !ok || g != w {
			t.Errorf("downloaded %s: %v (present: %v), want %v", name, g, ok, w)
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("downloaded %s, which is not in the paths asked for", name)
		}
	}
}

func tarOf(t suiteT, files map[string]file) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		f := files[n]
		hdr := &tar.Header{Name: n, Typeflag: f.typ, Mode: f.mode, ModTime: time.Now()}
		switch f.typ {
		case tar.TypeReg:
			hdr.Size = int64(len(f.body))
		case tar.TypeSymlink:
			hdr.Linkname = f.body
		case tar.TypeDir:
			hdr.Name += "/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if f.typ == tar.TypeReg {
			if _, err := io.WriteString(tw, f.body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// untar reads an archive into a map by entry name ("./" and a trailing
// "/" removed).
func untar(r io.Reader) (map[string]file, error) {
	files := map[string]file{}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return files, nil
		}
		if err != nil {
			return files, err
		}
		name := strings.TrimSuffix(strings.TrimPrefix(hdr.Name, "./"), "/")
		f := file{typ: hdr.Typeflag, mode: int64(fs.FileMode(hdr.Mode).Perm()), body: hdr.Linkname}
		if f.typ == tar.TypeRegA {
			f.typ = tar.TypeReg
		}
		if f.typ == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				return files, fmt.Errorf("entry %s: %w", hdr.Name, err)
			}
			f.body = string(b)
		}
		if _, dup := files[name]; dup {
			return files, fmt.Errorf("entry %s is in the archive twice", name)
		}
		files[name] = f
	}
}

func (s *suite) testCleanup(t suiteT) {
	t.Run("twice", func(t suiteT) {
		h := s.connect(t, true)
		handle := h.prepare(t, h.job())
		ctx, cancel := h.ctx()
		defer cancel()
		for i := 1; i <= 2; i++ {
			if err := h.c.Cleanup(ctx, handle); err != nil {
				t.Errorf("Cleanup number %d: %v", i, err)
			}
		}
	})
	t.Run("after_failed_prepare", func(t suiteT) {
		h := s.connect(t, true)
		ctx, cancel := h.ctx()
		defer cancel()
		job := h.job()
		job.Shell = "sdktest-no-such-shell"
		if handle, err := h.c.Prepare(ctx, job); err == nil {
			t.Logf("the executor prepared a job for shell %q; cleaning it up with its handle", job.Shell)
			if err := h.c.Cleanup(ctx, handle); err != nil {
				t.Errorf("Cleanup: %v", err)
			}
		}
		if err := h.c.Cleanup(ctx, sdk.Handle{JobID: job.ID}); err != nil {
			t.Errorf("Cleanup of job %q with a handle holding only its ID (after a failed Prepare): %v", job.ID, err)
		}
		never := h.job().ID
		if err := h.c.Cleanup(ctx, sdk.Handle{JobID: never}); err != nil {
			t.Errorf("Cleanup of job %q, never prepared: %v", never, err)
		}
	})
	t.Run("fresh_plugin", func(t suiteT) {
		first := s.connect(t, true)
		handle := first.prepare(t, first.job())
		outs, _, stderr := outputs(1)
		res := first.runSteps(t, handle, []sdk.Step{first.step("write", first.shells()[0], "echo data > sdktest-file")}, outs)
		if r := res[0]; r.Err != nil || r.ExitCode != 0 {
			t.Fatalf("the step ended with %+v; stderr %q", r, stderr[0])
		}
		second := s.connect(t, true)
		ctx, cancel := second.ctx()
		defer cancel()
		if err := second.c.Cleanup(ctx, handle); err != nil {
			t.Fatalf("Cleanup from a plugin that did not prepare the job: %v", err)
		}
		if s.cfg.local && filepath.IsAbs(handle.BuildDir) {
			if _, err := os.Lstat(handle.BuildDir); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("build directory %s is still there after Cleanup from a fresh plugin (%v)", handle.BuildDir, err)
			}
		}
	})
	t.Run("kills_running_step", func(t suiteT) {
		h := s.connect(t, true)
		handle := h.prepare(t, h.job())
		step := h.step("runs on", h.shells()[0], "sleep 1000 &\necho \"pids $$ $!\"\necho ready\nwait")
		r, stdout, _ := h.startAndStop(t, handle, step, func(context.CancelFunc) {
			ctx, cancel := h.ctx()
			defer cancel()
			if err := h.c.Cleanup(ctx, handle); err != nil {
				t.Errorf("Cleanup while a step runs: %v", err)
			}
		})
		if r.Err == nil && r.ExitCode == 0 {
			t.Errorf("a step stopped by Cleanup ended with %+v, as if it had succeeded", r)
		}
		h.checkStoppedGone(t, stdout.String())
	})
}
