package qemu

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/sshexec"
	"github.com/berthci/berth/sshexec/sshdtest"
)

// One job end to end in a real VM booted from the test guest: the VM is
// QEMU with the accelerator auto picks, on an overlay of the base image;
// steps run over SSH with their exit codes and output; files go up and
// come down; a cancelled step is stopped in the guest; Cleanup from a
// fresh executor kills the VM and deletes the overlay, and the base image
// is unchanged. One boot for all of it.
func TestJobInRealVM(t *testing.T) {
	g := requireGuest(t)
	settings := g.settings(t)
	e := configured(t, settings)
	base := settings["base_image"].(string)
	baseSum := fileSum(t, base)
	ctx := t.Context()

	start := time.Now()
	h, err := e.Prepare(ctx, sdk.Job{ID: "e2e/1", Shell: "bash"})
	must(t, err, "Prepare")
	prepared := time.Since(start)
	code, _, stderr, err := run(ctx, e, h, "sh", "true")
	if err != nil || code != 0 {
		t.Fatalf("first step: exit code %d, error %v, stderr %q", code, err, stderr)
	}
	t.Logf("boot to first stage: %s (Prepare %s: overlay, QEMU start, boot, SSH login, build directory)",
		time.Since(start).Round(time.Millisecond), prepared.Round(time.Millisecond))

	st := state(t, h)
	t.Run("the VM", func(t *testing.T) {
		cmdline := strings.Split(readFile(t, "/proc/"+strconv.Itoa(st.PID)+"/cmdline"), "\x00")
		e.mu.Lock()
		accel := e.cfg.accel
		e.mu.Unlock()
		if e.kvm.usable() != nil && accel != "tcg" {
			t.Errorf("accel auto chose %q on a machine where KVM is not usable (%v); want tcg", accel, e.kvm.usable())
		}
		want := []string{
			"-accel " + accel,
			"-m 256M",
			"-netdev user,id=net0,hostfwd=tcp:127.0.0.1:" + strconv.Itoa(st.Port) + "-:22,restrict=on",
			"-drive file=" + filepath.Join(st.Dir, diskFile) + ",if=virtio,format=qcow2,cache=unsafe",
		}
		joined := strings.Join(cmdline, " ")
		for _, w := range want {
			if !strings.Contains(joined, w) {
				t.Errorf("QEMU's command line %q lacks %q", joined, w)
			}
		}
		if ps, ok := readStat(st.PID); !ok || ps.pgrp != st.PID {
			t.Errorf("QEMU (pid %d) is not the leader of its own process group: %+v", st.PID, ps)
		}
		info := imageInfo(t, filepath.Join(st.Dir, diskFile))
		if info.BackingFilename != base || info.Format != "qcow2" {
			t.Errorf("the job's disk is %+v; want a qcow2 overlay backed by %s", info, base)
		}
	})

	t.Run("steps", func(t *testing.T) {
		tests := []struct {
			name, shell, script  string
			wantCode             int
			wantStdout, wantErrs string
		}{
			{"exit 0", "sh", "exit 0", 0, "", ""},
			{"exit 7 with output", "bash", "echo out; echo err >&2; exit 7", 7, "out\n", "err\n"},
			{"killed by SIGKILL", "sh", "kill -9 $$", 137, "", ""},
			{"bash", "bash", `echo "${BASH_VERSION:+bash}"`, 0, "bash\n", ""},
			{"sh is not bash", "sh", `echo "${BASH_VERSION:-not bash}"`, 0, "not bash\n", ""},
			{"the guest's kernel", "sh", "uname -r", 0, g.release + "\n", ""},
			{"a QEMU machine", "sh", "cat /sys/class/dmi/id/sys_vendor", 0, "QEMU\n", ""},
			{"the guest user", "sh", "id -un", 0, "ci\n", ""},
			{"in the build directory", "sh", "pwd", 0, h.BuildDir + "\n", ""},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				code, stdout, stderr, err := run(ctx, e, h, tt.shell, tt.script)
				if err != nil || code != tt.wantCode || stdout != tt.wantStdout || stderr != tt.wantErrs {
					t.Errorf("step %q: exit code %d, error %v, stdout %q, stderr %q; want %d, no error, %q, %q",
						tt.script, code, err, stdout, stderr, tt.wantCode, tt.wantStdout, tt.wantErrs)
				}
			})
		}
	})

	t.Run("upload and download", func(t *testing.T) {
		upload := []entry{
			{name: "art", typ: tar.TypeDir, mode: 0o755},
			{name: "art/run.sh", typ: tar.TypeReg, mode: 0o755, body: "#!/bin/sh\necho \"hello from $(uname -n)\"\n"},
			{name: "art/secret", typ: tar.TypeReg, mode: 0o600, body: "s3cret"},
			{name: "art/link", typ: tar.TypeSymlink, body: "run.sh"},
		}
		must(t, e.Upload(ctx, h, "in", bytes.NewReader(tarOf(t, upload))), "Upload")
		code, stdout, stderr, err := run(ctx, e, h, "bash", `./in/art/link > made.txt
stat -c %a in/art/secret >> made.txt
cat made.txt`)
		if err != nil || code != 0 || stdout != "hello from berth-test-guest\n600\n" {
			t.Fatalf("step running the uploaded script: exit code %d, error %v, stdout %q, stderr %q", code, err, stdout, stderr)
		}
		var buf bytes.Buffer
		must(t, e.Download(ctx, h, []string{"in", "made.txt", "no/such/file"}, &buf), "Download")
		got := untar(t, buf.Bytes())
		want := map[string]entry{
			"in":            {typ: tar.TypeDir},
			"in/art":        {typ: tar.TypeDir},
			"in/art/run.sh": {typ: tar.TypeReg, mode: 0o755, body: upload[1].body},
			"in/art/secret": {typ: tar.TypeReg, mode: 0o600, body: "s3cret"},
			"in/art/link":   {typ: tar.TypeSymlink, body: "run.sh"},
			"made.txt":      {typ: tar.TypeReg, mode: 0o644, body: stdout},
		}
		if len(got) != len(want) {
			t.Errorf("downloaded %d entries %v, want %d", len(got), keys(got), len(want))
		}
		for name, w := range want {
			gotEntry, ok := got[name]
			if w.typ != tar.TypeReg {
				gotEntry.mode = 0
			}
			gotEntry.name = ""
			if !ok || gotEntry != w {
				t.Errorf("downloaded %s: %+v (present: %v), want %+v", name, gotEntry, ok, w)
			}
		}
	})

	t.Run("writes go to the overlay", func(t *testing.T) {
		overlay := filepath.Join(st.Dir, diskFile)
		before := imageInfo(t, overlay).ActualSize
		code, _, stderr, err := run(ctx, e, h, "sh", "head -c 16777216 /dev/urandom > big && sync")
		if err != nil || code != 0 {
			t.Fatalf("writing 16 MiB in the guest: exit code %d, error %v, stderr %q", code, err, stderr)
		}
		if after := imageInfo(t, overlay).ActualSize; after-before < 16<<20 {
			t.Errorf("the overlay grew by %d bytes when the guest wrote 16 MiB, want at least that", after-before)
		}
		if sum := fileSum(t, base); sum != baseSum {
			t.Errorf("the base image changed while a job wrote to its disk")
		}
	})

	t.Run("cancel", func(t *testing.T) {
		stdout := sshdtest.NewWatch("ready\n")
		stepCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		type result struct {
			code int
			err  error
		}
		done := make(chan result, 1)
		go func() {
			code, err := e.Run(stepCtx, h, sdk.Step{Name: "cancelled", Shell: "sh", GracePeriod: 30 * time.Second, Script: `trap 'echo "got TERM"; kill $!; exit 3' TERM
sleep 1000 &
echo ready
wait`}, sdk.Output{Stdout: stdout, Stderr: io.Discard})
			done <- result{code, err}
		}()
		select {
		case <-stdout.Seen():
		case r := <-done:
			t.Fatalf("the step ended before it was ready: %+v, stdout %q", r, stdout)
		case <-time.After(2 * time.Minute):
			t.Fatalf("the step did not print ready within 2 minutes: stdout %q", stdout)
		}
		cancel()
		var r result
		select {
		case r = <-done:
		case <-time.After(2 * time.Minute):
			t.Fatal("Run did not return within 2 minutes of the cancel")
		}
		if r.code != 3 || !errors.Is(r.err, context.Canceled) || !strings.Contains(stdout.String(), "got TERM") {
			t.Errorf("the cancelled step ended with exit code %d, error %v, stdout %q; want 3, context.Canceled, its TERM trap run", r.code, r.err, stdout)
		}
		code, out, _, err := run(ctx, e, h, "sh", `ps -o args | grep '^sleep 1000' || true`)
		if err != nil || code != 0 || out != "" {
			t.Errorf("processes of the cancelled step still run in the guest: %q (%v)", out, err)
		}
	})

	// Executors with other known_hosts files log in to the same guest.
	t.Run("host key pinned under the alias", func(t *testing.T) {
		_, otherKey, err := ed25519.GenerateKey(rand.Reader)
		must(t, err, "making a key")
		signer, err := ssh.NewSignerFromKey(otherKey)
		must(t, err, "making a key")
		dir := t.TempDir()
		tests := []struct {
			name, knownHosts, wantErr string
		}{
			{"unknown", "", `host berth-test-guest is not in the known_hosts file`},
			{"changed", knownhosts.Line([]string{"berth-test-guest"}, signer.PublicKey()) + "\n", "host key of berth-test-guest does not match"},
		}
		for i, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				file := filepath.Join(dir, strconv.Itoa(i))
				must(t, os.WriteFile(file, []byte(tt.knownHosts), 0o600), "writing %s", file)
				other := map[string]any{}
				for k, v := range settings {
					other[k] = v
				}
				other["known_hosts_file"] = file
				_, _, _, err := run(ctx, configured(t, other), h, "sh", "true")
				var hk *sshexec.HostKeyError
				if !errors.As(err, &hk) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("a step with the guest's key %s: %v; want a host key error saying %q", tt.name, err, tt.wantErr)
				}
			})
		}
	})

	t.Run("cleanup from a fresh executor", func(t *testing.T) {
		fresh := configured(t, settings)
		must(t, fresh.Cleanup(ctx, h), "Cleanup")
		if !waitGone(st.PID, 10*time.Second) {
			t.Errorf("QEMU (pid %d) still runs after Cleanup", st.PID)
			_ = killProcess(st.PID)
		}
		if _, err := os.Stat(st.Dir); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("the job's folder %s (its overlay) is still there after Cleanup: %v", st.Dir, err)
		}
		if c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(st.Port)), time.Second); err == nil {
			c.Close()
			t.Errorf("the forwarded port %d still accepts connections after Cleanup", st.Port)
		}
		// The executor that started the VM sees it gone.
		_, _, _, err := run(ctx, e, h, "sh", "true")
		if err == nil || !strings.Contains(err.Error(), "the job's VM is gone") {
			t.Errorf("a step after Cleanup: %v; want an error saying the VM is gone", err)
		}
		must(t, e.Cleanup(ctx, h), "Cleanup again")
		if sum := fileSum(t, base); sum != baseSum {
			t.Errorf("the base image changed during the job")
		}
	})
}

type entry struct {
	name string
	typ  byte
	mode int64
	body string
}

func tarOf(t testing.TB, entries []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, en := range entries {
		hdr := &tar.Header{Name: en.name, Typeflag: en.typ, Mode: en.mode, ModTime: time.Now()}
		switch en.typ {
		case tar.TypeReg:
			hdr.Size = int64(len(en.body))
		case tar.TypeSymlink:
			hdr.Linkname, hdr.Mode = en.body, 0o777
		case tar.TypeDir:
			hdr.Name += "/"
		}
		must(t, tw.WriteHeader(hdr), "tar header")
		if en.typ == tar.TypeReg {
			_, err := io.WriteString(tw, en.body)
			must(t, err, "tar body")
		}
	}
	must(t, tw.Close(), "tar")
	return buf.Bytes()
}

func untar(t testing.TB, b []byte) map[string]entry {
	t.Helper()
	got := map[string]entry{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return got
		}
		must(t, err, "reading the downloaded archive")
		name := strings.TrimSuffix(strings.TrimPrefix(hdr.Name, "./"), "/")
		en := entry{typ: hdr.Typeflag, mode: hdr.Mode & 0o777, body: hdr.Linkname}
		if en.typ == tar.TypeReg {
			body, err := io.ReadAll(tr)
			must(t, err, "reading %s", name)
			en.body = string(body)
		}
		got[name] = en
	}
}

func keys(m map[string]entry) []string {
	var names []string
	for k := range m {
		names = append(names, k)
	}
	return names
}

func fileSum(t testing.TB, name string) string {
	t.Helper()
	f, err := os.Open(name)
	must(t, err, "opening %s", name)
	defer f.Close()
	h := sha256.New()
	_, err = io.Copy(h, f)
	must(t, err, "reading %s", name)
	return hex.EncodeToString(h.Sum(nil))
}

type qemuImageInfo struct {
	Format          string `json:"format"`
	BackingFilename string `json:"backing-filename"`
	ActualSize      int64  `json:"actual-size"`
}

func imageInfo(t testing.TB, image string) qemuImageInfo {
	t.Helper()
	out, err := exec.Command("qemu-img", "info", "-U", "--output=json", image).Output()
	must(t, err, "qemu-img info %s", image)
	var info qemuImageInfo
	must(t, json.Unmarshal(out, &info), "qemu-img info's JSON")
	return info
}
