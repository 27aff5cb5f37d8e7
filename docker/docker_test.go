package docker

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/registry"
	"github.com/moby/moby/client"

	"github.com/berthci/berth/internal/syncbuf"
	"github.com/berthci/berth/sdk"
)

// testRunner is the berth.runner label of the executors these tests make,
// so that what a test leaves can be found.
const testRunner = "berth-test"

// newExecutor returns an executor configured with settings plus
// pull_policy if-not-present and the test runner's name.
func newExecutor(t *testing.T, settings map[string]any, opts ...Option) *Executor {
	t.Helper()
	s := map[string]any{"pull_policy": "if-not-present", "runner_name": testRunner}
	for k, v := range settings {
		s[k] = v
	}
	e := New(opts...)
	if err := e.Configure(t.Context(), s); err != nil {
		t.Fatalf("Configure(%v): %v", s, err)
	}
	return e
}

// newJob returns a job with a unique ID running image.
func newJob(image string) sdk.Job {
	return sdk.Job{ID: uniqueName("test"), Name: "test", Image: sdk.Image{Name: image}, Timeout: 10 * time.Minute, Shell: "sh"}
}

// prepare prepares job and cleans it up when the test ends.
func prepare(t *testing.T, e *Executor, job sdk.Job) sdk.Handle {
	t.Helper()
	h, err := e.Prepare(t.Context(), job)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := e.Cleanup(ctx, sdk.Handle{JobID: job.ID}); err != nil {
			t.Errorf("Cleanup of job %s: %v", job.ID, err)
		}
	})
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	return h
}

// result is how a step ended.
type result struct {
	code           int
	stdout, stderr string
	err            error
}

// run runs script with sh in the job and fails the test if Run does not
// return within two minutes.
func run(t *testing.T, e *Executor, h sdk.Handle, script string) result {
	t.Helper()
	return runCtx(t, t.Context(), e, h, script, nil, nil)
}

func runCtx(t *testing.T, ctx context.Context, e *Executor, h sdk.Handle, script string, stdout, stderr *syncbuf.Buffer) result {
	t.Helper()
	if stdout == nil {
		stdout, stderr = &syncbuf.Buffer{}, &syncbuf.Buffer{}
	}
	done := make(chan result, 1)
	go func() {
		code, err := e.Run(ctx, h, sdk.Step{Name: "test", Script: script, Shell: "sh", GracePeriod: 3 * time.Second}, sdk.Output{Stdout: stdout, Stderr: stderr})
		done <- result{code: code, err: err}
	}()
	select {
	case r := <-done:
		r.stdout, r.stderr = stdout.String(), stderr.String()
		return r
	case <-time.After(2 * time.Minute):
		t.Fatalf("Run of %q did not return within two minutes", script)
		return result{}
	}
}

// mustRun runs script and fails the test unless it exits 0.
func mustRun(t *testing.T, e *Executor, h sdk.Handle, script string) string {
	t.Helper()
	r := run(t, e, h, script)
	if r.err != nil || r.code != 0 {
		t.Fatalf("script %q ended with code %d, error %v; stdout %q, stderr %q", script, r.code, r.err, r.stdout, r.stderr)
	}
	return r.stdout
}

func TestServices(t *testing.T) {
	c := engineClient(t)
	image := testImage(t, c, "berth-test/busybox", imageOptions{})
	httpd := testImage(t, c, "berth-test/httpd", imageOptions{
		files:   map[string]string{"www/index.html": "hello from the service\n"},
		changes: []string{"EXPOSE 8080", `CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]`},
	})
	services := []sdk.Service{
		{Image: sdk.Image{Name: httpd}, Aliases: []string{"web"}},
		// The same image under another alias, with its own command and
		// variables.
		{
			Image:     sdk.Image{Name: httpd},
			Aliases:   []string{"other"},
			Command:   []string{"sh", "-c", `echo "$GREETING" > /www/index.html && exec httpd -f -p 8080 -h /www`},
			Variables: map[string]string{"GREETING": "hello from the other one"},
		},
	}
	derived := serviceAliases(httpd)[0]
	fetch := "wget -q -O - http://web:8080/index.html && wget -q -O - http://other:8080/ && wget -q -O - http://" + derived + ":8080/ >/dev/null && echo derived-ok"
	want := "hello from the service\nhello from the other one\nderived-ok\n"
	for _, mode := range []string{"", "bridge"} {
		t.Run("network_mode="+mode, func(t *testing.T) {
			e := newExecutor(t, map[string]any{"network_mode": mode})
			job := newJob(image)
			job.Services = services
			h := prepare(t, e, job)
			if out := mustRun(t, e, h, fetch); out != want {
				t.Errorf("fetching from the services printed %q, want %q", out, want)
			}
		})
	}
}

func TestServiceThatDoesNotComeUp(t *testing.T) {
	c := engineClient(t)
	image := testImage(t, c, "berth-test/busybox", imageOptions{})
	silent := testImage(t, c, "berth-test/silent", imageOptions{changes: []string{"EXPOSE 8080"}})
	tests := []struct {
		name    string
		command []string
		want    []string
	}{
		{"never_listens", []string{"sh", "-c", "echo starting the database; echo no config found >&2; sleep 1000"},
			[]string{`service "` + silent + `"`, "alias db", "TCP port 8080", "within 2s", "wait_for_services_timeout", "starting the database", "no config found"}},
		{"exits", []string{"sh", "-c", "echo giving up; exit 3"},
			[]string{`service "` + silent + `"`, "exited with code 3", "giving up"}},
	}
	e := newExecutor(t, map[string]any{"wait_for_services_timeout": "2s"})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			job := newJob(image)
			job.Services = []sdk.Service{{Image: sdk.Image{Name: silent}, Aliases: []string{"db"}, Command: tt.command}}
			_, err := e.Prepare(t.Context(), job)
			defer e.Cleanup(context.Background(), sdk.Handle{JobID: job.ID})
			if err == nil {
				t.Fatal("Prepare succeeded with a service that never listens")
			}
			t.Logf("the error: %v", err)
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("the error does not say %q: %v", w, err)
				}
			}
		})
	}
}

func TestPullPolicies(t *testing.T) {
	c := engineClient(t)
	reg := registryAddr(t)
	v1 := testImage(t, c, "berth-test/busybox", imageOptions{files: map[string]string{"version": "one\n"}})
	v2 := testImage(t, c, "berth-test/busybox", imageOptions{files: map[string]string{"version": "two\n"}})
	remote := reg + "/" + uniqueName("berth-test/pull") + ":latest"
	t.Cleanup(func() { removeImage(t, c, remote) })

	pushImage(t, c, v1, remote, registry.AuthConfig{})
	removeImage(t, c, remote)
	version := func(t *testing.T, policies ...string) (string, error) {
		t.Helper()
		e := newExecutor(t, map[string]any{"pull_policy": policies})
		job := newJob(remote)
		h, err := e.Prepare(t.Context(), job)
		defer e.Cleanup(context.Background(), sdk.Handle{JobID: job.ID})
		if err != nil {
			return "", err
		}
		return mustRun(t, e, h, "cat /version"), nil
	}
	steps := []struct {
		name     string
		before   func(t *testing.T)
		policies []string
		want     string
		wantErr  []string
	}{
		{name: "never_without_the_image", policies: []string{PullNever},
			wantErr: []string{remote, `pull policy "never"`, "not on the docker engine"}},
		{name: "if_not_present_pulls_it", policies: []string{PullIfNotPresent}, want: "one\n"},
		{name: "if_not_present_keeps_it", before: func(t *testing.T) {
			// The registry gets version two; the engine keeps one.
			pushImage(t, c, v2, remote, registry.AuthConfig{})
			if _, err := c.ImageTag(t.Context(), client.ImageTagOptions{Source: v1, Target: remote}); err != nil {
				t.Fatal(err)
			}
		},
			policies: []string{PullIfNotPresent}, want: "one\n"},
		{name: "never_uses_it", policies: []string{PullNever}, want: "one\n"},
		{name: "always_pulls_again", policies: []string{PullAlways}, want: "two\n"},
		{name: "missing_tag", before: func(t *testing.T) { remote = reg + "/berth-test/no-such-image:" + randomID() },
			policies: []string{PullAlways}, wantErr: []string{"no-such-image", `pull policy "always"`, "registry " + reg + " has no such image"}},
	}
	// The steps build on each other: each sees what the one before left.
	for _, s := range steps {
		if !t.Run(s.name, func(t *testing.T) {
			if s.before != nil {
				s.before(t)
			}
			got, err := version(t, s.policies...)
			switch {
			case len(s.wantErr) > 0 && err == nil:
				t.Fatalf("the job ran (printing %q); want an error", got)
			case len(s.wantErr) > 0:
				t.Logf("the error: %v", err)
				for _, w := range s.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("the error does not say %q: %v", w, err)
					}
				}
			case err != nil:
				t.Fatal(err)
			case got != s.want:
				t.Errorf("the job's image has version %q, want %q", got, s.want)
			}
		}) {
			return
		}
	}
}

func TestCancelLeavesNothing(t *testing.T) {
	c := engineClient(t)
	image := testImage(t, c, "berth-test/busybox", imageOptions{})
	httpd := testImage(t, c, "berth-test/httpd", imageOptions{
		files:   map[string]string{"www/index.html": "hello from the service\n"},
		changes: []string{"EXPOSE 8080", `CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]`},
	})
	e := newExecutor(t, nil)
	job := newJob(image)
	job.Services = []sdk.Service{{Image: sdk.Image{Name: httpd}, Aliases: []string{"web"}}}
	h := prepare(t, e, job)
	if left := labelled(t, c, LabelJob+"="+job.ID); len(left) != 4 {
		t.Errorf("a job with one service has %v; want a job container, a service container, a network and a volume", left)
	}

	// A step whose processes ignore SIGTERM, one of them in a process group
	// of its own (it leaves the step's group, so only Cleanup gets it).
	script := `trap 'echo got TERM' TERM
(trap '' TERM; exec sleep 1231) &
setsid sleep 1232 &
echo ready
while :; do sleep 1233; done`
	ctx, cancel := context.WithCancel(t.Context())
	stdout, stderr := &syncbuf.Buffer{}, &syncbuf.Buffer{}
	done := make(chan result, 1)
	go func() { done <- runCtx(t, ctx, e, h, script, stdout, stderr) }()
	deadline := time.After(time.Minute)
	for !strings.Contains(stdout.String(), "ready") {
		select {
		case r := <-done:
			t.Fatalf("the step ended before it was ready: %+v", r)
		case <-deadline:
			t.Fatalf("the step did not print ready; stdout %q, stderr %q", stdout, stderr)
		case <-time.After(20 * time.Millisecond):
		}
	}
	cancel()
	r := <-done
	if !strings.Contains(r.stdout, "got TERM") {
		t.Errorf("the step got no SIGTERM before SIGKILL: stdout %q, stderr %q", r.stdout, r.stderr)
	}
	if r.err == nil {
		t.Errorf("a cancelled step returned no error (code %d)", r.code)
	}
	// The container lives on until Cleanup: what of the step runs in it?
	// (The patterns do not match grep's own command line.)
	out := mustRun(t, e, h, `grep -l -e '123[1]' -e '123[3]' /proc/[0-9]*/cmdline 2>/dev/null | wc -l
grep -l '123[2]' /proc/[0-9]*/cmdline 2>/dev/null | wc -l`)
	if out != "0\n1\n" {
		t.Errorf("after the cancel, the step's processes (first count) and the one that left its group (second) number %q; want 0 and 1", out)
	}
	if err := e.Cleanup(t.Context(), h); err != nil {
		t.Fatal(err)
	}
	if left := labelled(t, c, LabelJob+"="+job.ID); len(left) > 0 {
		t.Errorf("after Cleanup the engine still has %v", left)
	}
}

func TestMemoryLimit(t *testing.T) {
	c := engineClient(t)
	image := testImage(t, c, "berth-test/busybox", imageOptions{})
	e := newExecutor(t, map[string]any{"memory": "32m", "memory_swap": "32m"})
	h := prepare(t, e, newJob(image))
	r := run(t, e, h, `x=$(head -c 100000000 /dev/zero | tr '\0' a); echo "${#x} bytes held"`)
	if r.err != nil || r.code != 137 {
		t.Fatalf("a step past its memory limit ended with code %d, error %v; want 137 (SIGKILL); stdout %q, stderr %q", r.code, r.err, r.stdout, r.stderr)
	}
	for _, w := range []string{"ran out of memory", "32m", `"memory"`} {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("stderr does not say %q: %q", w, r.stderr)
		}
	}
	// The container survives: the next step runs.
	if out := mustRun(t, e, h, "echo still here"); out != "still here\n" {
		t.Errorf("the step after the OOM kill printed %q", out)
	}
}

func TestUser(t *testing.T) {
	c := engineClient(t)
	image := testImage(t, c, "berth-test/busybox", imageOptions{})
	e := newExecutor(t, map[string]any{"user": "nobody"})
	h := prepare(t, e, newJob(image))
	if err := e.Upload(t.Context(), h, "src", bytes.NewReader(tarOf(t, map[string]string{"a.txt": "uploaded\n"}))); err != nil {
		t.Fatal(err)
	}
	out := mustRun(t, e, h, `id -u; echo made > made.txt; cat src/a.txt; echo more >> src/a.txt; mkdir -p "$PWD.tmp/x" && echo tmp-ok`)
	if want := "65534\nuploaded\ntmp-ok\n"; out != want {
		t.Errorf("as user nobody the step printed %q, want %q", out, want)
	}
}

func TestErrors(t *testing.T) {
	c := engineClient(t)
	image := testImage(t, c, "berth-test/busybox", imageOptions{})
	missing := "berth-test/never-built:" + randomID()
	noEngine := func(k string) string {
		if k == "DOCKER_HOST" {
			return "unix:///nonexistent/from-env.sock"
		}
		return ""
	}
	tests := []struct {
		name     string
		settings map[string]any
		job      func(j *sdk.Job)
		want     []string
		opts     []Option
	}{
		{"never_missing_image", map[string]any{"pull_policy": "never"}, func(j *sdk.Job) { j.Image.Name = missing },
			[]string{missing, `pull policy "never"`}, nil},
		{"registry_unreachable", map[string]any{"pull_policy": "always"},
			func(j *sdk.Job) { j.Image.Name = fmt.Sprintf("127.0.0.1:%d/x/y:z", freePort(t)) },
			[]string{"/x/y:z", "cannot be reached", `pull policy "always"`}, nil},
		{"engine_unreachable", map[string]any{"host": "unix:///nonexistent/docker.sock"}, nil,
			[]string{"unix:///nonexistent/docker.sock", `setting "host"`, "does not answer"}, nil},
		{"engine_unreachable_from_env", nil, nil,
			[]string{"unix:///nonexistent/from-env.sock", "DOCKER_HOST", "does not answer"}, []Option{WithEnv(noEngine)}},
		{"image_not_allowed", map[string]any{"allowed_images": []string{"registry.example/**"}}, nil,
			[]string{image, "allowed_images", "registry.example/**"}, nil},
		{"pull_policy_not_allowed", nil, func(j *sdk.Job) { j.Image.PullPolicy = []string{PullAlways} },
			[]string{"always", "does not allow", "pull_policy: if-not-present"}, nil},
		{"no_image", nil, func(j *sdk.Job) { j.Image.Name = "" }, []string{"names no image", `"image"`}, nil},
		{"entrypoint_that_exits", nil, func(j *sdk.Job) { j.Image.Entrypoint = []string{"false"} },
			[]string{"the job container", "has stopped", "entrypoint"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newExecutor(t, tt.settings, append(tt.opts, WithLogger(slog.New(slog.DiscardHandler)))...)
			job := newJob(image)
			if tt.job != nil {
				tt.job(&job)
			}
			h, err := e.Prepare(t.Context(), job)
			defer e.Cleanup(context.Background(), sdk.Handle{JobID: job.ID})
			if err == nil {
				// Some failures only show when a step runs.
				r := run(t, e, h, "true")
				err = r.err
			}
			if err == nil {
				t.Fatal("the job prepared and ran; want an error")
			}
			t.Logf("the error: %v", err)
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("the error does not say %q: %v", w, err)
				}
			}
		})
	}
}

func TestUploadDownload(t *testing.T) {
	c := engineClient(t)
	image := testImage(t, c, "berth-test/busybox", imageOptions{})
	e := newExecutor(t, nil)
	h := prepare(t, e, newJob(image))
	if err := e.Upload(t.Context(), h, "", bytes.NewReader(tarOf(t, map[string]string{"top.txt": "top\n", "d/e/f.txt": "deep\n"}))); err != nil {
		t.Fatal(err)
	}
	if err := e.Upload(t.Context(), h, "a/b", bytes.NewReader(tarOf(t, map[string]string{"c.txt": "below\n"}))); err != nil {
		t.Fatal(err)
	}
	if out := mustRun(t, e, h, "cat top.txt d/e/f.txt a/b/c.txt"); out != "top\ndeep\nbelow\n" {
		t.Errorf("the uploaded files read %q", out)
	}
	var buf bytes.Buffer
	if err := e.Download(t.Context(), h, []string{".", "d"}, &buf); err != nil {
		t.Fatal(err)
	}
	files := untarFiles(t, &buf)
	want := map[string]string{"top.txt": "top\n", "d/e/f.txt": "deep\n", "a/b/c.txt": "below\n"}
	for name, body := range want {
		if files[name] != body {
			t.Errorf("downloaded %s is %q, want %q (all: %v)", name, files[name], body, files)
		}
	}
	for _, bad := range []string{"/etc", "../x", "a/../../x"} {
		if err := e.Download(t.Context(), h, []string{bad}, &buf); err == nil {
			t.Errorf("Download of %q succeeded; want an error", bad)
		}
	}
}

func TestBashFallsBackToSh(t *testing.T) {
	c := engineClient(t)
	image := testImage(t, c, "berth-test/busybox", imageOptions{})
	e := newExecutor(t, nil)
	h := prepare(t, e, newJob(image))
	var stdout, stderr syncbuf.Buffer
	code, err := e.Run(t.Context(), h, sdk.Step{Name: "bash", Script: "echo hello\n", Shell: "bash"}, sdk.Output{Stdout: &stdout, Stderr: &stderr})
	if err != nil || code != 0 || stdout.String() != "hello\n" {
		t.Fatalf("a bash step in an image without bash ended with code %d, error %v, stdout %q", code, err, stdout.String())
	}
	if !strings.Contains(stderr.String(), "has no bash") {
		t.Errorf("stderr does not warn that bash is missing: %q", stderr.String())
	}
}

// A Prepare retried for the same job replaces what the first one made.
func TestPrepareAgain(t *testing.T) {
	c := engineClient(t)
	image := testImage(t, c, "berth-test/busybox", imageOptions{})
	e := newExecutor(t, nil)
	for _, services := range []int{0, 1} {
		t.Run(fmt.Sprintf("services=%d", services), func(t *testing.T) {
			job := newJob(image)
			for range services {
				job.Services = append(job.Services, sdk.Service{Image: sdk.Image{Name: image}, Command: []string{"sleep", "1000"}})
			}
			first := prepare(t, e, job)
			mustRun(t, e, first, "echo first > marker")
			before := labelled(t, c, LabelJob+"="+job.ID)
			second := prepare(t, e, job)
			if out := mustRun(t, e, second, "cat marker 2>/dev/null; echo second"); out != "second\n" {
				t.Errorf("the second Prepare's job sees %q; want a fresh build volume", out)
			}
			// (The build volume is anonymous: its name changes.)
			after := labelled(t, c, LabelJob+"="+job.ID)
			if len(after) != len(before) || strings.Join(after[:len(after)-1], " ") != strings.Join(before[:len(before)-1], " ") {
				t.Errorf("the first Prepare made %v, after the second there are %v", before, after)
			}
			if err := e.Cleanup(t.Context(), second); err != nil {
				t.Fatal(err)
			}
			if left := labelled(t, c, LabelJob+"="+job.ID); len(left) > 0 {
				t.Errorf("after Cleanup the engine still has %v", left)
			}
		})
	}
}
