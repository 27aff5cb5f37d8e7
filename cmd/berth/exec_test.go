package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

var updateCorpus = flag.Bool("update-exec-corpus", false, "rewrite the want files of the exec corpus")

// corpusDir holds the pipelines of TestExecCorpus: each folder has a
// .gitlab-ci.yml (and any files it needs), optional args (one argument
// per line; $TMP stands for a temporary folder), optional changes (files
// changed after the commit) and want: the events expected.
const corpusDir = "../../host/localrun/testdata/corpus"

// TestExecCorpus runs each pipeline of the corpus with berth exec --json
// on the shell executor, one job at a time so that the order of events is
// the plan's, and compares the events with the want file.
func TestExecCorpus(t *testing.T) {
	entries, err := os.ReadDir(corpusDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		t.Run(e.Name(), func(t *testing.T) {
			src := filepath.Join(corpusDir, e.Name())
			proj := gitProject(t, src)
			tmp := t.TempDir()
			args := []string{"exec", "--json", "--concurrency", "1", "-C", proj, "--cache-dir", filepath.Join(tmp, "cache")}
			if data, err := os.ReadFile(filepath.Join(src, "args")); err == nil {
				for _, a := range strings.Split(strings.TrimSpace(string(data)), "\n") {
					args = append(args, strings.ReplaceAll(a, "$TMP", tmp))
				}
			}
			listOut, _ := berthIn(t, proj, append(slices.Clone(args), "--list")...)
			out, code := berthIn(t, proj, args...)
			got := "plan:\n" + reducePlan(listOut, proj) + "run:\n" + reduceEvents(t, out, proj) + fmt.Sprintf("exit %d\n", code)
			wantPath := filepath.Join(src, "want")
			if *updateCorpus {
				if err := os.WriteFile(wantPath, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(wantPath)
			if err != nil {
				t.Fatalf("%v (run with -update-exec-corpus to write it)", err)
			}
			if got != string(want) {
				t.Errorf("events differ from %s\n--- got:\n%s--- want:\n%s--- output:\n%s", wantPath, got, want, out)
			}
		})
	}
}

// gitProject copies a corpus folder into a new git repository on branch
// main with one commit, then changes the files its changes file lists.
func gitProject(t *testing.T, src string) string {
	t.Helper()
	proj := filepath.Join(t.TempDir(), "project")
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if rel == "want" || rel == "args" || rel == "changes" {
			return nil
		}
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(proj, rel), 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(proj, rel), data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"init", "-q", "-b", "main"},
		{"add", "-A"},
		{"-c", "user.name=Corpus", "-c", "user.email=corpus@example.com", "commit", "-q", "-m", "corpus commit"},
	} {
		cmd := exec.Command("git", append([]string{"-C", proj}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	if data, err := os.ReadFile(filepath.Join(src, "changes")); err == nil {
		for _, f := range strings.Fields(string(data)) {
			if err := os.WriteFile(filepath.Join(proj, f), []byte("changed after the commit\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return proj
}

// berthIn runs berth in dir and returns its stdout (stderr is added when
// it is not empty) and exit code.
func berthIn(t *testing.T, dir string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, berthBin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+t.TempDir(), "XDG_CACHE_HOME="+t.TempDir())
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running berth %v: %v", args, err)
	}
	if errb.Len() > 0 {
		out.WriteString("STDERR: " + errb.String())
	}
	return out.String(), code
}

// reducePlan turns berth exec --list --json output into one line per job:
// name, stage, what rules make of it and why.
func reducePlan(out, proj string) string {
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var e jsonEvent
		if err := json.Unmarshal([]byte(line), &e); err != nil || e.Type != "job" {
			continue
		}
		fmt.Fprintf(&b, "  %s [%s] %s", e.Job, e.Stage, e.When)
		if e.AllowFailure != nil && *e.AllowFailure {
			b.WriteString(" allow_failure")
		}
		if len(e.Needs) > 0 {
			fmt.Fprintf(&b, " needs=%s", strings.Join(e.Needs, ","))
		}
		if e.Detail != "" {
			fmt.Fprintf(&b, " (%s)", e.Detail)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// reduceEvents turns berth exec --json output into the lines a want file
// holds: job starts, ends, skips and retries, CHECK lines of the logs,
// warnings and the pipeline's end.
func reduceEvents(t *testing.T, out, proj string) string {
	t.Helper()
	var b strings.Builder
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		var e jsonEvent
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			fmt.Fprintf(&b, "not JSON: %s\n", strings.ReplaceAll(line, proj, "$DIR"))
			continue
		}
		switch e.Type {
		case "job_started":
			fmt.Fprintf(&b, "start %s\n", e.Job)
		case "job_finished":
			s := fmt.Sprintf("end %s %s", e.Job, e.Status)
			if e.Status == "failed" && e.ExitCode != nil {
				s += fmt.Sprintf(" %s exit=%d", e.Reason, *e.ExitCode)
			}
			if e.Allowed {
				s += " (allowed)"
			}
			if e.Attempt > 1 {
				s += fmt.Sprintf(" attempt=%d", e.Attempt)
			}
			if e.Coverage != "" {
				s += " coverage=" + e.Coverage
			}
			b.WriteString(s + "\n")
		case "job_skipped":
			fmt.Fprintf(&b, "%s %s: %s\n", e.Status, e.Job, e.Detail)
		case "job_retry":
			fmt.Fprintf(&b, "retry %s after attempt %d\n", e.Job, e.Attempt)
		case "job_notice":
			fmt.Fprintf(&b, "notice %s: %s\n", e.Job, e.Detail)
		case "log":
			if text, ok := strings.CutPrefix(e.Text, "CHECK "); ok {
				fmt.Fprintf(&b, "  %s: %s\n", e.Job, text)
			}
		case "warning":
			fmt.Fprintf(&b, "warning: %s\n", strings.ReplaceAll(e.Text, proj, "$DIR"))
		case "pipeline_finished":
			fmt.Fprintf(&b, "pipeline %s\n", e.Status)
		default:
			fmt.Fprintf(&b, "%s %s\n", e.Type, e.Job)
		}
	}
	return b.String()
}

// TestExecNeedsStartsBeforeStageEnds shows that a job starts as soon as
// what it needs is done: slow (stage build) waits for a file that follower
// (stage test, needs: [compile]) writes. Run stage by stage, slow would
// give up after a minute and fail.
func TestExecNeedsStartsBeforeStageEnds(t *testing.T) {
	sync := t.TempDir()
	dir := writePipeline(t, `
stages: [build, test]
slow:
  stage: build
  script:
    - for i in $(seq 600); do test -e "$SYNC/follower" && exit 0; sleep 0.1; done; exit 1
compile:
  stage: build
  script: [true]
follower:
  stage: test
  needs: [compile]
  script: [touch "$SYNC/follower"]
`)
	out, code := berthIn(t, dir, "exec", "--no-color", "--concurrency", "2", "--var", "SYNC="+sync)
	if code != 0 {
		t.Fatalf("exit %d; follower did not start while slow ran:\n%s", code, out)
	}
}

// TestExecResourceGroupSerialises runs two jobs of one resource group with
// room for both: each fails if it sees the other running.
func TestExecResourceGroupSerialises(t *testing.T) {
	sync := t.TempDir()
	job := func(me, other string) string {
		return fmt.Sprintf(`
%s:
  resource_group: prod-$TARGET
  script:
    - touch "$SYNC/%s"
    - for i in $(seq 15); do if test -e "$SYNC/%s"; then echo "%s runs with %s"; exit 1; fi; sleep 0.1; done
    - rm "$SYNC/%s"
`, me, me, other, me, other, me)
	}
	dir := writePipeline(t, "variables: {TARGET: eu}\n"+job("one", "two")+job("two", "one"))
	out, code := berthIn(t, dir, "exec", "--no-color", "--concurrency", "2", "--var", "SYNC="+sync)
	if code != 0 {
		t.Fatalf("exit %d; the jobs of one resource group overlapped:\n%s", code, out)
	}
}

// TestExecWorksOnACopy checks that jobs see uncommitted changes but do not
// change the user's files, unless --in-place.
func TestExecWorksOnACopy(t *testing.T) {
	proj := gitProject(t, writePipeline(t, `
job:
  script:
    - grep -q uncommitted tracked.txt
    - test -e new-untracked.txt
    - echo made > made-by-job.txt
`))
	os.WriteFile(filepath.Join(proj, "tracked.txt"), []byte("uncommitted\n"), 0o644)
	os.WriteFile(filepath.Join(proj, "new-untracked.txt"), []byte("x\n"), 0o644)
	out, code := berthIn(t, proj, "exec", "--no-color")
	if code != 0 {
		t.Fatalf("exit %d: the job did not see the working tree:\n%s", code, out)
	}
	if _, err := os.Stat(filepath.Join(proj, "made-by-job.txt")); err == nil {
		t.Fatalf("the job wrote into the project folder without --in-place")
	}
	out, code = berthIn(t, proj, "exec", "--no-color", "--in-place")
	if code != 0 {
		t.Fatalf("--in-place: exit %d:\n%s", code, out)
	}
	if data, err := os.ReadFile(filepath.Join(proj, "made-by-job.txt")); err != nil || string(data) != "made\n" {
		t.Errorf("--in-place: the job's file is not in the project folder: %q %v", data, err)
	}
}

// TestExecInterruptRunsAfterScript sends SIGINT while a job runs: its
// after_script runs, the jobs after it are canceled, berth exits non-zero.
func TestExecInterruptRunsAfterScript(t *testing.T) {
	marks := t.TempDir()
	yaml := fmt.Sprintf(`
stages: [one, two]
running:
  stage: one
  script:
    - touch %[1]s/started
    - sleep 1000
  after_script:
    - touch %[1]s/after-script-ran
later:
  stage: two
  script: [touch %[1]s/later-ran]
`, marks)
	cmd, out := startExec(t, yaml, "--grace", "3s")
	waitFor(t, time.Minute, "the job to start", func() bool { _, err := os.Stat(filepath.Join(marks, "started")); return err == nil })
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	if err == nil {
		t.Errorf("berth exec exited 0 after SIGINT:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(marks, "after-script-ran")); err != nil {
		t.Errorf("after_script did not run after SIGINT:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(marks, "later-ran")); err == nil {
		t.Errorf("a job of a later stage ran after SIGINT:\n%s", out)
	}
	for _, re := range []string{`(?m)^running\s+one\s+canceled`, `(?m)^later\s+two\s+canceled`} {
		if !regexp.MustCompile(re).MatchString(out.String()) {
			t.Errorf("summary does not match %s:\n%s", re, out)
		}
	}
}

// TestExecListAndText checks --list and the text output: sections one
// line each, a summary with allow_failure, exit code 1 for a failure.
func TestExecListAndText(t *testing.T) {
	dir := writePipeline(t, `
stages: [build, test]
build:
  stage: build
  script: [echo built]
unit:
  needs: [build]
  allow_failure: {exit_codes: [3]}
  script: [exit 3]
broken:
  script: [exit 1]
never:
  rules: [{if: $CI_COMMIT_TAG}]
  script: [x]
`)
	out, code := berthIn(t, dir, "exec", "--no-color", "--list")
	if code != 0 {
		t.Fatalf("--list exit %d:\n%s", code, out)
	}
	for _, re := range []string{
		`(?m)^JOB\s+STAGE\s+NEEDS\s+WHEN\s+ALLOW_FAILURE\s+WHY$`,
		`(?m)^unit\s+test\s+build\s+on_success\s+yes`,
		`(?m)^broken\s+test\s+\(stage\)\s+on_success\s+no`,
		`(?m)^never\s+test\s+-\s+never\s+-\s+no rule matches`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("--list does not match %s:\n%s", re, out)
		}
	}
	out, code = berthIn(t, dir, "exec", "--no-color")
	if code != 1 {
		t.Errorf("exit %d, want 1 (broken failed):\n%s", code, out)
	}
	for _, re := range []string{
		`(?m)^build \| Preparing the "shell" executor \(\d+(\.\d+)?[µm]?s\)$`,
		`(?m)^unit\s+test\s+failed \(allowed\)\s+\S+\s+exit codes 3\s+exit code 3$`,
		`(?m)^broken\s+test\s+failed\s+\S+\s+no\s+exit code 1$`,
		`Pipeline failed in `,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("output does not match %s:\n%s", re, out)
		}
	}
	if strings.Contains(out, "section_start") {
		t.Errorf("section markers in the output:\n%s", out)
	}
	out, _ = berthIn(t, dir, "exec", "--no-color", "--verbose", "build")
	if !strings.Contains(out, "Preparing the \"shell\" executor\n") {
		t.Errorf("--verbose does not show sections in full:\n%s", out)
	}
}
