//go:build linux

package lambda

import (
	"archive/zip"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berthci/berth/lambda/internal/proctree"
)

// The tests run the real berth function (built by Package) under the AWS
// Lambda Runtime Interface Emulator on 127.0.0.1, one emulator per
// executor, and drive the executor through the real AWS SDK.

// RIEEnv names the emulator binary for the tests; .ci/setup-lambda.sh sets
// it. When it is set and the file is missing, the tests fail instead of
// skipping.
const RIEEnv = "BERTH_LAMBDA_RIE"

const rieInstall = "go install github.com/aws/aws-lambda-runtime-interface-emulator/cmd/aws-lambda-rie@v0.0.0-20261030222936-bef5c4ba774d (or source .ci/setup-lambda.sh)"

// testEnv is what TestMain prepared: the emulator and the bootstrap.
type testEnv struct {
	rie       string
	bootstrap string
	// err says why there is no emulator or bootstrap.
	err error
	// required is set when CI asked for the emulator.
	required bool
}

// env is set once by TestMain, before any test runs, and only read after.
var env testEnv

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	env = findRIE()
	var dir string
	if env.err == nil {
		var err error
		dir, err = os.MkdirTemp("", "berth-lambda-test-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		env.bootstrap, env.err = buildBootstrap(dir)
		if env.err != nil {
			env.required = true // a build failure is a failure, not a skip
		}
	}
	return m.Run()
}

func findRIE() testEnv {
	if p := os.Getenv(RIEEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			return testEnv{err: fmt.Errorf("%s=%s: %w", RIEEnv, p, err), required: true}
		}
		return testEnv{rie: p, required: true}
	}
	if p, err := exec.LookPath("aws-lambda-rie"); err == nil {
		return testEnv{rie: p}
	}
	if home, err := os.UserHomeDir(); err == nil {
		p := filepath.Join(home, "go", "bin", "aws-lambda-rie")
		if _, err := os.Stat(p); err == nil {
			return testEnv{rie: p}
		}
	}
	return testEnv{err: errors.New("aws-lambda-rie is not installed")}
}

// buildBootstrap builds the function with Package and takes the bootstrap
// out of the zip, as Lambda would.
func buildBootstrap(dir string) (string, error) {
	zipPath := filepath.Join(dir, "function.zip")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := Package(ctx, zipPath, PackageOptions{Arch: runtimeArch()}); err != nil {
		return "", err
	}
	zr, err := zip.OpenReader(zipPath)
	if err != nil {
		return "", err
	}
	defer zr.Close()
	if len(zr.File) != 1 || zr.File[0].Name != "bootstrap" || zr.File[0].Mode().Perm() != 0o755 {
		return "", fmt.Errorf("the package holds %d files, the first %q with mode %v; want only bootstrap, 0755", len(zr.File), zr.File[0].Name, zr.File[0].Mode())
	}
	rc, err := zr.File[0].Open()
	if err != nil {
		return "", err
	}
	defer rc.Close()
	out := filepath.Join(dir, "task", "bootstrap")
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return "", err
	}
	f, err := os.OpenFile(out, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(f, rc); err != nil {
		f.Close()
		return "", err
	}
	return out, f.Close()
}

// needRIE skips (or, in CI, fails) a test that needs the emulator.
func needRIE(t testing.TB) {
	t.Helper()
	switch {
	case env.err == nil:
	case env.required:
		t.Fatalf("the Lambda tests cannot run: %v", env.err)
	default:
		t.Skipf("needs the AWS Lambda Runtime Interface Emulator: %v; install it with %s", env.err, rieInstall)
	}
}

// emulator is one aws-lambda-rie serving the berth function.
type emulator struct {
	endpoint string
	// scratch is the function's scratch directory (its /tmp).
	scratch string
}

// startEmulator starts an emulator with the function's timeout in seconds
// and scratch as the function's scratch directory; the test's cleanup
// stops it and everything below it.
func startEmulator(t testing.TB, timeoutSeconds int, scratch string) *emulator {
	t.Helper()
	needRIE(t)
	logPath := filepath.Join(t.TempDir(), "rie.log")
	var lastErr error
	for range 3 { // a port picked may be taken before the emulator binds it
		apiPort, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		rapiPort, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		logFile, err := os.Create(logPath)
		if err != nil {
			t.Fatal(err)
		}
		addr := "127.0.0.1:" + strconv.Itoa(apiPort)
		cmd := exec.Command(env.rie,
			"--runtime-interface-emulator-address", addr,
			"--runtime-api-address", "127.0.0.1:"+strconv.Itoa(rapiPort),
			env.bootstrap)
		cmd.Dir = filepath.Dir(env.bootstrap)
		cmd.Env = []string{
			"PATH=" + os.Getenv("PATH"),
			"AWS_LAMBDA_FUNCTION_TIMEOUT=" + strconv.Itoa(timeoutSeconds),
			"BERTH_SCRATCH_DIR=" + scratch,
		}
		cmd.Stdout, cmd.Stderr = logFile, logFile
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			logFile.Close()
			t.Fatalf("starting %s: %v", env.rie, err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		stop := func() {
			_ = proctree.KillBelow(cmd.Process.Pid, 10*time.Second, nil)
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				t.Errorf("the emulator (pid %d) did not exit after SIGKILL", cmd.Process.Pid)
			}
			logFile.Close()
		}
		if err := waitListening(addr, exited); err != nil {
			stop()
			lastErr = fmt.Errorf("%w; its log:\n%s", err, tail(logPath))
			continue
		}
		t.Cleanup(func() {
			stop()
			if t.Failed() {
				t.Logf("emulator log (end):\n%s", tail(logPath))
			}
		})
		return &emulator{endpoint: "http://" + addr, scratch: scratch}
	}
	t.Fatalf("the emulator did not start: %v", lastErr)
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitListening waits (10 s at most) until addr accepts connections.
func waitListening(addr string, exited <-chan struct{}) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return errors.New("the emulator exited at start")
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("the emulator does not listen on %s after 10s", addr)
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 4096 {
		b = b[len(b)-4096:]
	}
	return strings.TrimSpace(string(b))
}

// settingsFor are executor settings that point at em, with the build
// directory in its scratch directory and one invocation at a time (the
// emulator crashes on concurrent invocations).
func settingsFor(em *emulator, timeout string) map[string]any {
	return map[string]any{
		"function_name":   "function", // the only name the emulator serves
		"region":          "us-east-1",
		"endpoint":        em.endpoint,
		"timeout":         timeout,
		"build_dir":       filepath.Join(em.scratch, "build"),
		"max_concurrency": 1,
	}
}

func runtimeArch() string { return runtime.GOARCH }
