package lambda

import (
	"archive/tar"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/berthci/berth/sdk"
)

// base are settings that configure without any AWS access (no call is
// made until RunSteps).
func base(extra map[string]any) map[string]any {
	s := map[string]any{"function_name": "berth", "region": "eu-west-1", "endpoint": "http://127.0.0.1:1"}
	for k, v := range extra {
		s[k] = v
	}
	return s
}

func TestConfigure(t *testing.T) {
	// No region from the environment or a shared config file.
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_DEFAULT_REGION", "")
	t.Setenv("AWS_CONFIG_FILE", "/dev/null")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
	tests := []struct {
		name     string
		settings map[string]any
		wantErr  string // "" for none
	}{
		{"defaults", base(nil), ""},
		{"no function", map[string]any{"region": "eu-west-1"}, `"function_name" is required`},
		{"timeout too long", base(map[string]any{"timeout": "16m"}), `"timeout" must be`},
		{"timeout zero", base(map[string]any{"timeout": "0s"}), `"timeout" must be`},
		{"timeout not a duration", base(map[string]any{"timeout": "soon"}), `"timeout"`},
		{"relative build dir", base(map[string]any{"build_dir": "build"}), `"build_dir" must be an absolute path`},
		{"negative concurrency", base(map[string]any{"max_concurrency": -1}), `"max_concurrency"`},
		{"bad environment", base(map[string]any{"environment": []string{"NOVALUE"}}), `"NOVALUE" is not NAME=VALUE`},
		{"unknown key", base(map[string]any{"image": "x"}), `unknown setting "image"`},
		{"no region", map[string]any{"function_name": "berth"}, "no AWS region"},
		{"region from ARN", map[string]any{"function_name": "arn:aws:lambda:ap-south-1:123456789012:function:berth"}, ""},
		{"ARN in another region", map[string]any{"function_name": "arn:aws:lambda:ap-south-1:123456789012:function:berth", "region": "eu-west-1"}, "ARN in region ap-south-1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := New().Configure(t.Context(), tt.settings)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("Configure(%v): %v", tt.settings, err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("Configure(%v) returned %v; want an error containing %q", tt.settings, err, tt.wantErr)
			}
		})
	}
}

func configured(t *testing.T, extra map[string]any) *Executor {
	t.Helper()
	e := New(testCredentials())
	if err := e.Configure(t.Context(), base(extra)); err != nil {
		t.Fatal(err)
	}
	return e
}

func TestPrepare(t *testing.T) {
	e := configured(t, map[string]any{"timeout": "10m", "build_dir": "/tmp/b"})
	tests := []struct {
		name    string
		job     sdk.Job
		wantErr string
	}{
		{"fits", sdk.Job{ID: "a", Shell: "sh", Timeout: 10 * time.Minute, DownloadPaths: []string{"out", "dist/app"}}, ""},
		{"no timeout given", sdk.Job{ID: "b"}, ""},
		{"timeout past the function's", sdk.Job{ID: "c", Shell: "sh", Timeout: time.Hour}, "timeout of 1h0m0s, longer than the 10m0s of the Lambda function"},
		{"other shell", sdk.Job{ID: "d", Shell: "pwsh"}, `wants shell "pwsh"`},
		{"services", sdk.Job{ID: "e", Services: []sdk.Service{{Image: sdk.Image{Name: "postgres"}}}}, "cannot start them"},
		{"download path outside", sdk.Job{ID: "f", DownloadPaths: []string{"../etc"}}, `download path "../etc"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := e.Prepare(t.Context(), tt.job)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("Prepare returned %v; want an error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.JobID != tt.job.ID || h.BuildDir != "/tmp/b" || h.Version != handleVersion {
				t.Errorf("Prepare returned the handle %+v", h)
			}
			if err := e.Cleanup(t.Context(), h); err != nil {
				t.Errorf("Cleanup: %v", err)
			}
		})
	}
	if _, err := New().Prepare(t.Context(), sdk.Job{ID: "x"}); err == nil || !strings.Contains(err.Error(), "not configured") {
		t.Errorf("Prepare before Configure returned %v; want an error saying it is not configured", err)
	}
}

type entry struct {
	name, link string
	typ        byte
	body       []byte
}

func tarOf(t *testing.T, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o644, Size: int64(len(e.body)), Linkname: e.link}
		if e.typ != tar.TypeReg {
			hdr.Size = 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(e.body); err != nil && e.typ == tar.TypeReg {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestUploadRefuses(t *testing.T) {
	e := configured(t, nil)
	h, err := e.Prepare(t.Context(), sdk.Job{ID: "up"})
	if err != nil {
		t.Fatal(err)
	}
	noise := make([]byte, 5<<20) // random: gzip cannot shrink it
	rand.Read(noise)
	tests := []struct {
		name    string
		dir     string
		archive []byte
		wantErr string
	}{
		{"fine", "src", tarOf(t, entry{name: "a/b.txt", typ: tar.TypeReg, body: []byte("x")}), ""},
		{"dir outside", "../x", tarOf(t), "leads outside the build directory"},
		{"absolute dir", "/etc", tarOf(t), "absolute path"},
		{"entry outside", "", tarOf(t, entry{name: "a/../../x", typ: tar.TypeReg}), `"a/../../x"`},
		{"absolute entry", "", tarOf(t, entry{name: "/etc/passwd", typ: tar.TypeReg}), `"/etc/passwd"`},
		{"hard link outside", "", tarOf(t, entry{name: "l", typ: tar.TypeLink, link: "../../etc/passwd"}), "hard link target"},
		{"device", "", tarOf(t, entry{name: "dev", typ: tar.TypeChar}), "not supported"},
		{"not a tar", "", []byte("hello, this is not a tar stream at all, but long enough to be read as a header block …" + strings.Repeat("x", 512)), "reading the archive"},
		{"too big", "", tarOf(t, entry{name: "noise", typ: tar.TypeReg, body: noise}), "more than the 4.3 MiB a Lambda request can carry"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := e.Upload(t.Context(), h, tt.dir, bytes.NewReader(tt.archive))
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("Upload: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("Upload returned %v; want an error containing %q", err, tt.wantErr)
			}
		})
	}
	if err := e.Upload(t.Context(), sdk.Handle{JobID: "never"}, "", bytes.NewReader(tarOf(t))); !errors.Is(err, sdk.ErrNotFound) {
		t.Errorf("Upload for a job never prepared returned %v; want sdk.ErrNotFound", err)
	}
}

// A request over the limit is refused before any invocation: the endpoint
// (a closed port) is never called.
func TestRequestTooBig(t *testing.T) {
	e := configured(t, nil)
	h, err := e.Prepare(t.Context(), sdk.Job{ID: "big"})
	if err != nil {
		t.Fatal(err)
	}
	noise := make([]byte, 5<<20)
	rand.Read(noise)
	script := "cat <<'EOF' >/dev/null\n" + base64.StdEncoding.EncodeToString(noise) + "\nEOF\n"
	var stdout, stderr bytes.Buffer
	_, err = e.RunSteps(t.Context(), h, []sdk.Step{{Name: "script", Script: script, Shell: "sh"}},
		func(int) sdk.Output { return sdk.Output{Stdout: &stdout, Stderr: &stderr} })
	if err == nil || !strings.Contains(err.Error(), "a synchronous Lambda invoke takes less than 6.0 MiB") {
		t.Errorf("RunSteps with a 6.7 MiB script returned %v; want the request refused for its size", err)
	}
}

func TestDecodeResponse(t *testing.T) {
	const fn = "Lambda function \"berth\" in eu-west-1"
	tests := []struct {
		name          string
		status        int32
		functionError *string
		body          string
		wantErr       string // "" for a good response
	}{
		{"good", 200, nil, `{"version":1,"steps":[{"exit_code":0}]}`, ""},
		{"unknown fields", 200, nil, `{"version":1,"steps":[],"later":true}`, ""},
		{"newer version", 200, nil, `{"version":2,"steps":[]}`, "protocol version 2, this berth speaks 1"},
		{"function error, no header", 200, nil, `{"errorMessage":"berth function: the request has no steps","errorType":"errorString"}`,
			`failed: berth function: the request has no steps (errorString)`},
		{"function error with header", 200, aws.String("Unhandled"), `{"errorMessage":"boom","errorType":"Runtime.ExitError"}`,
			"failed (Unhandled): boom (Runtime.ExitError)"},
		{"task timed out (classic emulator)", 200, nil, `Task timed out after 3.00 seconds`,
			`"Task timed out after 3.00 seconds"; Lambda stopped it at its timeout`},
		{"sandbox timed out", 200, nil, `{"errorType":"Sandbox.Timedout","errorMessage":"RequestId: 1 Error: Task timed out after 3.00 seconds"}`,
			"Lambda stopped it at its timeout"},
		{"response too large", 200, nil, `{"errorType":"Function.ResponseSizeTooLarge"}`, "(Function.ResponseSizeTooLarge)"},
		{"not berth's", 200, nil, `{"statusCode":200,"body":"hi"}`, `failed: "{\"statusCode\":200,\"body\":\"hi\"}"`},
		{"empty", 200, nil, ``, "failed: (empty body)"},
		{"bad status", 502, nil, `oops`, `answered with status 502: "oops"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := decodeResponse(fn, tt.status, tt.functionError, []byte(tt.body))
			if tt.wantErr == "" {
				if err != nil || resp == nil {
					t.Errorf("decodeResponse(%q) = %v, %v; want a response", tt.body, resp, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), fn) {
				t.Errorf("decodeResponse(%q) returned %v; want an error naming the function and containing %q", tt.body, err, tt.wantErr)
			}
		})
	}
}

func TestCovered(t *testing.T) {
	tests := []struct {
		path  string
		roots []string
		want  bool
	}{
		{"out", []string{"out"}, true},
		{"out/a/b", []string{"out"}, true},
		{"outer", []string{"out"}, false},
		{"x", []string{"out", "x/"}, true},
		{"anything", []string{"."}, true},
		{"out", nil, false},
	}
	for _, tt := range tests {
		if got := covered(tt.path, tt.roots); got != tt.want {
			t.Errorf("covered(%q, %q) = %v, want %v", tt.path, tt.roots, got, tt.want)
		}
	}
}

func TestReserve(t *testing.T) {
	tests := []struct{ timeout, want time.Duration }{
		{4 * time.Second, time.Second},
		{time.Minute, 3 * time.Second},
		{15 * time.Minute, 5 * time.Second},
	}
	for _, tt := range tests {
		if got := (settings{Timeout: tt.timeout}).reserve(); got != tt.want {
			t.Errorf("reserve for a %s function = %s, want %s", tt.timeout, got, tt.want)
		}
	}
}

// testCredentials are dummy static credentials: the emulator checks none.
func testCredentials() Option {
	return WithAWSConfig(config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider("AKIDBERTHTEST", "berth-test-secret", "")))
}
