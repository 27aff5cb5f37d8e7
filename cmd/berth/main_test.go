package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/berthci/berth/internal/testplugin"
	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/shell"
)

// berthBin is the berth binary built once for these tests: they run it as
// users do, as a separate process that starts real plugin processes.
var berthBin string

func TestMain(m *testing.M) {
	// The test binary doubles as a misbehaving external plugin.
	if os.Getenv("BERTH_TEST_PLUGIN") == "protocol2" {
		servePluginProtocol2()
		return
	}
	dir, err := os.MkdirTemp("", "berth-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	berthBin, err = testplugin.BuildBerth(dir, ".")
	if err != nil {
		fmt.Fprintln(os.Stderr, "building berth:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// servePluginProtocol2 is a plugin built for an executor protocol berth
// does not speak.
func servePluginProtocol2() {
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: sdk.Handshake(),
		VersionedPlugins: map[int]plugin.PluginSet{
			2: {sdk.PluginName: &sdk.GRPCPlugin{Impl: shell.New()}},
		},
		GRPCServer: func(opts []grpc.ServerOption) *grpc.Server { return grpc.NewServer(opts...) },
	})
}

// writePipeline writes a .gitlab-ci.yml into a new folder and returns it.
func writePipeline(t *testing.T, yaml string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, ".gitlab-ci.yml"), []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// berth runs the berth binary to its end.
func berth(t *testing.T, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, berthBin, args...)
	cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+t.TempDir())
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running berth %v: %v", args, err)
	}
	return out.String(), code
}

func TestExecRunsHelloExample(t *testing.T) {
	out, code := berth(t, "exec", "--no-color", "-C", "../../examples/hello")
	if code != 0 {
		t.Fatalf("berth exec on examples/hello exited %d:\n%s", code, out)
	}
	for _, want := range []string{"Job succeeded", "failed (allowed)"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestExecExitCodesAndSummary(t *testing.T) {
	dir := writePipeline(t, `
stages: [one, two]
variables:
  GREETING: "it's \"quoted\" $$HOME"
ok:
  stage: one
  script:
    - echo "greeting=$GREETING"
bad:
  stage: one
  script:
    - exit 7
later:
  stage: two
  script: [echo never]
`)
	out, code := berth(t, "exec", "--no-color", "-C", dir)
	if code != 1 {
		t.Fatalf("exit code %d, want 1 (a job failed):\n%s", code, out)
	}
	for _, want := range []string{
		`greeting=it's "quoted" $HOME`,
		"ERROR: Job failed: exit code 7",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "never\n") && !strings.Contains(out, "echo never") {
		t.Errorf("the job of the later stage ran after a failure:\n%s", out)
	}
	if !strings.Contains(out, "later") || !strings.Contains(out, "skipped") {
		t.Errorf("summary does not show the later job as skipped:\n%s", out)
	}
}

func TestWrongProtocolPluginIsRefused(t *testing.T) {
	pdir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(pdir, "berth-executor-future")
	wrapper := "#!/bin/sh\nBERTH_TEST_PLUGIN=protocol2 exec " + strconv.Quote(self) + " \"$@\"\n"
	if err := os.WriteFile(path, []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	dir := writePipeline(t, "j:\n  script: [echo hi]\n")
	out, code := berth(t, "exec", "-C", dir, "--plugin-dir", pdir, "--executor", "future")
	if code == 0 {
		t.Fatalf("berth accepted a protocol-2 plugin:\n%s", out)
	}
	for _, want := range []string{`"future"`, path, "protocol 2", "protocol 1"} {
		if !strings.Contains(out, want) {
			t.Errorf("refusal does not name %q:\n%s", want, out)
		}
	}
}

// alive says whether pid is a running process (zombies count as gone).
func alive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z'
}

// childPids returns the pids whose parent is ppid.
func childPids(ppid int) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(data)
		i := strings.LastIndexByte(s, ')')
		fields := strings.Fields(s[i+1:])
		if len(fields) > 1 && fields[1] == strconv.Itoa(ppid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// waitFor polls cond until it holds or the bound passes.
func waitFor(t *testing.T, bound time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up after %s waiting for %s", bound, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// readPids reads whitespace-separated pids from a file.
func readPids(t *testing.T, path string) []int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, f := range strings.Fields(string(data)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("pid file %s: %v", path, err)
		}
		pids = append(pids, pid)
	}
	return pids
}

// startExec starts berth exec in the background on a pipeline whose job
// writes its shell's and a background sleep's pids to pidFile.
func startExec(t *testing.T, yaml string, extra ...string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	dir := writePipeline(t, yaml)
	cmd := exec.Command(berthBin, append([]string{"exec", "--no-color", "-C", dir}, extra...)...)
	cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+t.TempDir())
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmd, &out
}

func sleeperJob(pidFile string) string {
	return fmt.Sprintf(`
sleeper:
  script:
    - sleep 1000 & echo "$$ $!" > %s.tmp && mv %s.tmp %s; wait
`, pidFile, pidFile, pidFile)
}

func pluginPid(t *testing.T, berthPid int) int {
	t.Helper()
	for _, pid := range childPids(berthPid) {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.Contains(string(cmdline), serveFlag) {
			return pid
		}
	}
	t.Fatalf("no plugin process under berth (pid %d)", berthPid)
	return 0
}

func TestSIGKILLOfBerthLeavesNoProcess(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pids")
	cmd, out := startExec(t, sleeperJob(pidFile))
	waitFor(t, time.Minute, "the job to start", func() bool { _, err := os.Stat(pidFile); return err == nil })
	pids := append(readPids(t, pidFile), pluginPid(t, cmd.Process.Pid))
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	for _, pid := range pids {
		// Bounded wait: the plugin cleans up, then exits.
		waitFor(t, 30*time.Second, fmt.Sprintf("process %d to end (plugin or job; all: %v)\n%s", pid, pids, out), func() bool { return !alive(pid) })
	}
}

func TestSIGTERMStopsExecWithinGrace(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pids")
	grace := 3 * time.Second
	cmd, out := startExec(t, sleeperJob(pidFile), "--grace", grace.String())
	waitFor(t, time.Minute, "the job to start", func() bool { _, err := os.Stat(pidFile); return err == nil })
	pids := readPids(t, pidFile)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(grace + 2*time.Second):
		t.Fatalf("berth exec still running %s after SIGTERM:\n%s", grace+2*time.Second, out)
	}
	if cmd.ProcessState.ExitCode() == 0 {
		t.Errorf("berth exec exited 0 after being stopped:\n%s", out)
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("job process %d survived berth exec's SIGTERM", pid)
		}
	}
	if !strings.Contains(out.String(), "canceled") {
		t.Errorf("the job is not reported canceled:\n%s", out)
	}
}

func TestPluginCrashFailsJobNextJobPasses(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pids")
	yaml := `
stages: [one, two]
victim:
  stage: one
  allow_failure: true
  script:
    - sleep 1000 & echo "$$ $!" > ` + pidFile + `.tmp && mv ` + pidFile + `.tmp ` + pidFile + `; wait
survivor:
  stage: two
  script: [echo survivor-ran]
`
	cmd, out := startExec(t, yaml)
	waitFor(t, time.Minute, "the job to start", func() bool { _, err := os.Stat(pidFile); return err == nil })
	jobPids := readPids(t, pidFile)
	t.Cleanup(func() {
		for _, pid := range jobPids {
			syscall.Kill(pid, syscall.SIGKILL) // the job's own processes, started by this test
		}
	})
	plug := pluginPid(t, cmd.Process.Pid)
	if err := syscall.Kill(plug, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("berth exec failed (the crashed job is allowed to fail): %v\n%s", err, out)
	}
	text := out.String()
	for _, want := range []string{
		`executor plugin "shell" (pid ` + strconv.Itoa(plug) + `) died`,
		"killed by signal 9",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}
	if !regexp.MustCompile(`(?m)^survivor\s+two\s+success`).MatchString(text) {
		t.Errorf("the next job did not pass after the plugin crash:\n%s", text)
	}
}

func TestExecutorSettingsFromConfigAndFlags(t *testing.T) {
	dir := writePipeline(t, "where:\n  script: [echo \"dir=$CI_PROJECT_DIR\"]\n")
	fromFile, fromFlag := t.TempDir(), t.TempDir()
	cfg := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(cfg, []byte("concurrent = 1\n[[runners]]\nexecutor = \"shell\"\n[runners.shell]\nbuilds_dir = \""+fromFile+"\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"config file", []string{"--config", cfg}, "dir=" + fromFile + "/"},
		{"flag overrides the file", []string{"--config", cfg, "--shell-builds-dir", fromFlag}, "dir=" + fromFlag + "/"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, code := berth(t, append([]string{"exec", "--no-color", "-C", dir}, tt.args...)...)
			if code != 0 || !strings.Contains(out, tt.want) {
				t.Errorf("exit %d; want output with %q:\n%s", code, tt.want, out)
			}
		})
	}
	t.Run("unknown setting is refused naming it", func(t *testing.T) {
		bad := filepath.Join(t.TempDir(), "bad.toml")
		os.WriteFile(bad, []byte("[runners.shell]\nbuilds_dri = \"/tmp/x\"\n"), 0o644)
		out, code := berth(t, "exec", "-C", dir, "--config", bad)
		if code == 0 || !strings.Contains(out, `"builds_dri"`) || !strings.Contains(out, `"shell"`) {
			t.Errorf("exit %d; want a refusal naming the plugin and the key:\n%s", code, out)
		}
	})
	t.Run("invalid toml names file and line", func(t *testing.T) {
		bad := filepath.Join(t.TempDir(), "broken.toml")
		os.WriteFile(bad, []byte("[runners.shell]\nbuilds_dir = \n"), 0o644)
		out, code := berth(t, "exec", "-C", dir, "--config", bad)
		if code == 0 || !strings.Contains(out, bad+":2:") {
			t.Errorf("exit %d; want an error at %s:2:\n%s", code, bad, out)
		}
	})
}

func TestInvalidPipelineNamesFileLineColumn(t *testing.T) {
	dir := writePipeline(t, "job:\n  script: [echo a\n")
	out, code := berth(t, "exec", "-C", dir)
	if code == 0 || !regexp.MustCompile(`\.gitlab-ci\.yml:\d+:\d+: `).MatchString(out) {
		t.Errorf("exit %d; want an error with file:line:col:\n%s", code, out)
	}
}

func TestCustomExecutorFromPluginDir(t *testing.T) {
	if _, err := exec.LookPath("bwrap"); err != nil {
		t.Skip("the example executor needs bubblewrap: apt-get install bubblewrap")
	}
	pdir := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(pdir, "berth-executor-bwrap"), ".")
	build.Dir = "../../examples/custom-executor"
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the example executor: %v\n%s", err, out)
	}
	out, code := berth(t, "plugins", "list", "--plugin-dir", pdir)
	if code != 0 || !regexp.MustCompile(`(?m)^bwrap\s+\S+\s+1\s+external\s+`+regexp.QuoteMeta(pdir)).MatchString(out) {
		t.Fatalf("plugins list (exit %d) does not show the example as external in %s:\n%s", code, pdir, out)
	}
	dir := writePipeline(t, "sandboxed:\n  script:\n    - echo \"pid=$$\"\n    - test ! -e /root/.bashrc-should-not-matter || true\n")
	out, code = berth(t, "exec", "--no-color", "-C", dir, "--plugin-dir", pdir, "--executor", "bwrap")
	if code != 0 || !strings.Contains(out, "Job succeeded") || !strings.Contains(out, "executor bwrap") {
		t.Fatalf("exec with the bwrap executor (exit %d):\n%s", code, out)
	}
}
