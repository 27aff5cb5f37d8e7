package stepwrap

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// The wrapper's start and follow modes, run here with this machine's sh
// (the same POSIX sh code runs in the containers): what a container
// executor would see through its exec.

// wrapper runs the wrapper in a mode with stdin and returns stdout,
// stderr and the exit code. stdout may be cut after limit bytes (-1: no
// limit): the reading end is closed then, as a broken connection would.
func wrapper(t *testing.T, stdin string, limit int, args ...string) (string, string, int) {
	t.Helper()
	argv := Command(args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin = strings.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var stdout []byte
	if limit < 0 {
		stdout, err = io.ReadAll(pipe)
	} else {
		stdout = make([]byte, limit)
		_, err = io.ReadFull(pipe, stdout)
		pipe.Close()
	}
	if err != nil {
		t.Fatalf("reading the wrapper's stdout: %v", err)
	}
	code := 0
	if err := cmd.Wait(); err != nil {
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			t.Fatal(err)
		}
		code = exit.ExitCode()
	}
	return string(stdout), stderr.String(), code
}

func TestStartFollowsTheStep(t *testing.T) {
	dir := t.TempDir()
	script := "echo out1\necho err1 >&2\necho out2\nexit 7\n"
	out := filepath.Join(dir, "output", "s1")
	stdout, stderr, code := wrapper(t, script, -1, "start", "sh", filepath.Join(dir, "s1.sh"), filepath.Join(dir, "s1.pid"),
		filepath.Join(dir, "build"), "", strconv.Itoa(len(script)), out)
	if stdout != "out1\nout2\n" || stderr != "err1\n" || code != 7 {
		t.Errorf("start: stdout %q, stderr %q, exit %d; want out1 out2, err1, 7", stdout, stderr, code)
	}
	// The script ran in the build directory and left nothing behind but
	// the output files (removed by the next start).
	for _, gone := range []string{"s1.sh", "s1.sh.in", "s1.pid"} {
		if _, err := os.Stat(filepath.Join(dir, gone)); !os.IsNotExist(err) {
			t.Errorf("%s after the step: %v; want it removed", gone, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "build")); err != nil {
		t.Errorf("the build directory: %v", err)
	}
}

// TestStartAgainResumesABrokenStream: the exec's stdout breaks after 5000
// bytes; the step goes on, and the same start again, with the byte counts
// received, yields the rest (nothing lost or repeated) and the step's
// status, without running the step a second time.
func TestStartAgainResumesABrokenStream(t *testing.T) {
	dir := t.TempDir()
	ran := filepath.Join(dir, "ran")
	script := "echo run >> " + ran + "\ni=0\nwhile [ $i -lt 3000 ]; do echo \"line $i\"; echo \"eline $i\" >&2; i=$((i + 1)); done\nexit 3\n"
	var wantOut, wantErr strings.Builder
	for i := range 3000 {
		fmt.Fprintf(&wantOut, "line %d\n", i)
		fmt.Fprintf(&wantErr, "eline %d\n", i)
	}
	out := filepath.Join(dir, "output", "s2")
	args := []string{"start", "sh", filepath.Join(dir, "s2.sh"), filepath.Join(dir, "s2.pid"), "", "", strconv.Itoa(len(script)), out}
	first, firstErr, _ := wrapper(t, script, 5000, append(args, "0", "0")...)
	rest, restErr, code := wrapper(t, script, -1, append(args, strconv.Itoa(len(first)), strconv.Itoa(len(firstErr)))...)
	if code != 3 {
		t.Errorf("the second start exited %d; want the step's 3 (stderr %q)", code, restErr)
	}
	if got := first + rest; got != wantOut.String() {
		t.Errorf("stdout across the break: %d bytes, want %d (first %d)", len(got), wantOut.Len(), len(first))
	}
	if got := firstErr + restErr; got != wantErr.String() {
		t.Errorf("stderr across the break: %d bytes, want %d (first %d)", len(got), wantErr.Len(), len(firstErr))
	}
	if b, err := os.ReadFile(ran); err != nil || string(b) != "run\n" {
		t.Errorf("the step's runs: %q, %v; want one", b, err)
	}
	// follow, given the same counts, yields the same rest.
	again, againErr, code := wrapper(t, "", -1, "follow", out, strconv.Itoa(len(first)), strconv.Itoa(len(firstErr)))
	if again != rest || againErr != restErr || code != 3 {
		t.Errorf("follow: %d and %d bytes, exit %d; want the second start's %d and %d bytes, 3", len(again), len(againErr), code, len(rest), len(restErr))
	}
}

func TestIncompleteScriptIsNotRun(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "ran")
	script := "touch " + marker + "\n"
	_, stderr, code := wrapper(t, script, -1, "start", "sh", filepath.Join(dir, "s3.sh"), filepath.Join(dir, "s3.pid"),
		"", "", strconv.Itoa(len(script)+10), filepath.Join(dir, "output", "s3"))
	if code != 126 || !strings.Contains(stderr, "arrived incomplete") {
		t.Errorf("a short script: exit %d, stderr %q; want 126 saying it arrived incomplete", code, stderr)
	}
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Errorf("the incomplete script ran (%v)", err)
	}
	// The executor sends the start again, the script whole this time: the
	// incomplete one claimed nothing, so this one runs it.
	_, stderr, code = wrapper(t, script, -1, "start", "sh", filepath.Join(dir, "s3.sh"), filepath.Join(dir, "s3.pid"),
		"", "", strconv.Itoa(len(script)), filepath.Join(dir, "output", "s3"), "0", "0")
	if _, err := os.Stat(marker); code != 0 || err != nil {
		t.Errorf("the start after an incomplete one: exit %d, stderr %q, the script's mark: %v; want it run", code, stderr, err)
	}
}

func TestFollowWithoutOutput(t *testing.T) {
	_, stderr, code := wrapper(t, "", -1, "follow", filepath.Join(t.TempDir(), "none"), "0", "0")
	if code != 125 || !strings.Contains(stderr, "not there to resume") {
		t.Errorf("follow of nothing: exit %d, stderr %q; want 125 saying there is nothing to resume", code, stderr)
	}
}

// TestKeepAlive: the keep-alive says it runs, waits, and ends on SIGTERM;
// without sleep it waits on its stdin and ends when that closes.
func TestKeepAlive(t *testing.T) {
	for _, tt := range []struct {
		name string
		path string
		stop func(cmd *exec.Cmd, stdin io.Closer)
	}{
		{"with sleep, SIGTERM", os.Getenv("PATH"), func(cmd *exec.Cmd, _ io.Closer) { _ = cmd.Process.Signal(syscall.SIGTERM) }},
		{"without sleep, stdin closed", "/nonexistent", func(_ *exec.Cmd, stdin io.Closer) { stdin.Close() }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			argv := KeepAlive()
			sh, err := exec.LookPath(argv[0])
			if err != nil {
				t.Skip(err)
			}
			cmd := exec.Command(sh, argv[1:]...)
			cmd.Env = []string{"PATH=" + tt.path}
			// A group of its own: its sleep outlives it here (in a
			// container, as PID 1, it takes everything with it).
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			defer func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }()
			stdin, err := cmd.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			line, err := bufio.NewReader(stdout).ReadString('\n')
			if err != nil || line != ReadyLine+"\n" {
				t.Fatalf("first line %q (%v); want %q", line, err, ReadyLine)
			}
			tt.stop(cmd, stdin)
			if err := cmd.Wait(); err != nil {
				t.Errorf("the keep-alive ended with %v; want exit 0", err)
			}
		})
	}
}

// TestCommandFromEnv: the wrapper from the environment runs a step as the
// wrapper on the command line does, on a command line of a few hundred
// bytes; without the variable it fails instead of running nothing.
func TestCommandFromEnv(t *testing.T) {
	dir := t.TempDir()
	script := "echo out\necho err >&2\nexit 5\n"
	argv := CommandFromEnv("start", "sh", filepath.Join(dir, "s.sh"), filepath.Join(dir, "s.pid"), dir, "", strconv.Itoa(len(script)), filepath.Join(dir, "output", "s"), "0", "0")
	if n := len(strings.Join(argv, " ")); n > 1024 {
		t.Errorf("the command line has %d bytes; want a few hundred", n)
	}
	for _, tt := range []struct {
		name           string
		env            []string
		stdout, stderr string
		code           int
	}{
		{"with the wrapper", []string{Env + "=" + Script()}, "out\n", "err\n", 5},
		{"without", nil, "", "berth: the container has no step wrapper (environment variable " + Env + ")\n", 125},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(argv[0], argv[1:]...)
			cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, tt.env...)
			cmd.Stdin = strings.NewReader(script)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			code := 0
			var exit *exec.ExitError
			if errors.As(err, &exit) {
				code = exit.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if stdout.String() != tt.stdout || stderr.String() != tt.stderr || code != tt.code {
				t.Errorf("stdout %q, stderr %q, exit %d; want %q, %q, %d", stdout.String(), stderr.String(), code, tt.stdout, tt.stderr, tt.code)
			}
		})
	}
}
