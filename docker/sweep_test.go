package docker

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/berthci/berth/sdk"
)

// childEnv makes the test binary act as a plugin process that prepares a
// job and starts a step, then waits to be killed (see childMain).
const childEnv = "BERTH_DOCKER_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		childMain()
		return
	}
	os.Exit(m.Run())
}

// childMain prepares a job with a one-second timeout and a service from
// the images named in the environment, starts a long step, prints "ready"
// and blocks until it is killed.
func childMain() {
	fail := func(err error) {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	ctx := context.Background()
	e := New()
	if err := e.Configure(ctx, map[string]any{"pull_policy": "if-not-present", "runner_name": os.Getenv(childEnv)}); err != nil {
		fail(err)
	}
	job := sdk.Job{
		ID: os.Getenv("BERTH_TEST_JOB"), Image: sdk.Image{Name: os.Getenv("BERTH_TEST_IMAGE")}, Timeout: time.Second,
		Services: []sdk.Service{{Image: sdk.Image{Name: os.Getenv("BERTH_TEST_IMAGE")}, Command: []string{"sleep", "1000"}}},
	}
	h, err := e.Prepare(ctx, job)
	if err != nil {
		fail(err)
	}
	pr, pw := io.Pipe()
	go func() {
		_, err := e.Run(ctx, h, sdk.Step{Name: "step", Script: "echo running\nsleep 1000\n", Shell: "sh"}, sdk.Output{Stdout: pw, Stderr: io.Discard})
		fail(fmt.Errorf("the step ended: %v", err))
	}()
	if line, _ := bufio.NewReader(pr).ReadString('\n'); line != "running\n" {
		fail(fmt.Errorf("the step printed %q", line))
	}
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	fmt.Println("ready")
	select {}
}

// A plugin killed with SIGKILL cleans up nothing; the next plugin process
// of the same runner removes what it left once the job's timeout (plus a
// margin) has passed, and not before.
func TestKilledPluginLeftoversRemoved(t *testing.T) {
	c := engineClient(t)
	image := testImage(t, c, "berth-test/busybox", imageOptions{})
	runner := uniqueName("berth-test-killed")
	job := uniqueName("killed")
	label := LabelRunner + "=" + runner
	t.Cleanup(func() {
		e := New(WithClock(func() time.Time { return time.Now().Add(24 * time.Hour) }))
		_ = e.Cleanup(context.Background(), sdk.Handle{JobID: job})
	})

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+runner, "BERTH_TEST_JOB="+job, "BERTH_TEST_IMAGE="+image)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		lines <- line
	}()
	select {
	case line := <-lines:
		if line != "ready\n" {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("the plugin process said %q", line)
		}
	case <-time.After(2 * time.Minute):
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatal("the plugin process did not get its job ready within two minutes")
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	left := labelled(t, c, label)
	if len(left) != 4 {
		t.Fatalf("the killed plugin's job has %v; want a job container, a service container, a network and a volume", left)
	}
	// A new plugin process now: the job's timeout has passed, its margin
	// has not.
	newExecutor(t, map[string]any{"runner_name": runner})
	if now := labelled(t, c, label); strings.Join(now, " ") != strings.Join(left, " ") {
		t.Errorf("a plugin started before the job expired changed its resources from %v to %v", left, now)
	}
	// A new plugin process after the expiry.
	later := func() time.Time { return time.Now().Add(expiryMargin + time.Minute) }
	newExecutor(t, map[string]any{"runner_name": runner}, WithClock(later))
	if now := labelled(t, c, label); len(now) > 0 {
		t.Errorf("after the next plugin start past the job's expiry, the engine still has %v", now)
	}
}
