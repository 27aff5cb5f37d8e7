package docker

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/pkg/authconfig"
	"github.com/moby/moby/api/types/registry"
	"github.com/moby/moby/client"
)

// The tests need a Docker engine, Debian's static busybox to build images
// FROM scratch (nothing can be pulled from the internet), and for pulls a
// registry on 127.0.0.1:5000. .ci/setup-docker.sh brings all three.
const setupHint = "run .ci/setup-docker.sh (or: apt-get install docker.io busybox-static docker-registry, then start dockerd and docker-registry on 127.0.0.1:5000)"

// engineClient returns a client for the engine DOCKER_HOST (or the
// default socket) names, or skips the test when none answers.
func engineClient(t testing.TB) *client.Client {
	t.Helper()
	c, err := client.New(client.FromEnv)
	if err != nil {
		t.Skipf("no Docker engine client (%v): %s", err, setupHint)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := c.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		c.Close()
		t.Skipf("no Docker engine answers at %s (%v): %s", c.DaemonHost(), err, setupHint)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// registryAddr returns the test registry's address, or skips the test
// when none answers there.
func registryAddr(t testing.TB) string {
	t.Helper()
	addr := os.Getenv("BERTH_DOCKER_REGISTRY")
	if addr == "" {
		addr = "127.0.0.1:5000"
	}
	hc := http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Get("http://" + addr + "/v2/")
	if err != nil {
		t.Skipf("no registry answers at %s (%v): %s", addr, err, setupHint)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Skipf("the registry at %s answers /v2/ with %s: %s", addr, resp.Status, setupHint)
	}
	return addr
}

// busyboxPath returns a statically linked busybox, or skips the test.
func busyboxPath(t testing.TB) string {
	t.Helper()
	p := os.Getenv("BERTH_BUSYBOX")
	if p == "" {
		p = "/bin/busybox"
	}
	f, err := elf.Open(p)
	if err != nil {
		t.Skipf("no busybox at %s (%v): %s", p, err, setupHint)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			t.Skipf("%s is dynamically linked; a FROM scratch image needs Debian's busybox-static: %s", p, setupHint)
		}
	}
	return p
}

// rootfs is a tar of an image's files being put together.
type rootfs struct {
	buf  bytes.Buffer
	tw   *tar.Writer
	seen map[string]bool
}

func newRootfs() *rootfs {
	r := &rootfs{seen: map[string]bool{}}
	r.tw = tar.NewWriter(&r.buf)
	return r
}

func (r *rootfs) add(t testing.TB, hdr *tar.Header, body []byte) {
	t.Helper()
	if r.seen[hdr.Name] {
		return
	}
	r.seen[hdr.Name] = true
	hdr.ModTime = time.Unix(1700000000, 0)
	if hdr.Typeflag == tar.TypeReg {
		hdr.Size = int64(len(body))
	}
	if err := r.tw.WriteHeader(hdr); err != nil {
		t.Fatal(err)
	}
	if _, err := r.tw.Write(body); err != nil {
		t.Fatal(err)
	}
}

func (r *rootfs) dir(t testing.TB, name string, mode int64) {
	r.add(t, &tar.Header{Name: name + "/", Typeflag: tar.TypeDir, Mode: mode}, nil)
}

func (r *rootfs) file(t testing.TB, name string, mode int64, body []byte) {
	r.add(t, &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode}, body)
}

func (r *rootfs) symlink(t testing.TB, name, target string) {
	r.add(t, &tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777}, nil)
}

func (r *rootfs) bytes(t testing.TB) []byte {
	t.Helper()
	if err := r.tw.Close(); err != nil {
		t.Fatal(err)
	}
	return r.buf.Bytes()
}

// imageOptions shape a test image.
type imageOptions struct {
	bash    bool              // add the host's bash and its libraries
	files   map[string]string // extra files (path: contents)
	changes []string          // Dockerfile instructions (CMD, EXPOSE, …)
}

// testImage makes (once: the tag is a hash of the contents) an image FROM
// scratch with busybox and its applets in /bin, /etc/passwd with root and
// nobody, /tmp, and what opts adds. It returns the image's name.
func testImage(t testing.TB, c *client.Client, repo string, opts imageOptions) string {
	t.Helper()
	bb := busyboxPath(t)
	body, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bb, "--list").Output()
	if err != nil {
		t.Fatalf("%s --list: %v", bb, err)
	}
	r := newRootfs()
	for _, d := range []string{"bin", "etc", "www", "lib", "lib64", "usr", "usr/bin"} {
		r.dir(t, d, 0o755)
	}
	r.dir(t, "tmp", 0o1777)
	r.file(t, "bin/busybox", 0o755, body)
	for _, applet := range strings.Fields(string(out)) {
		if applet != "busybox" && (!opts.bash || applet != "bash") {
			r.symlink(t, "bin/"+applet, "busybox")
		}
	}
	r.file(t, "etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n"))
	r.file(t, "etc/group", 0o644, []byte("root:x:0:\nnogroup:x:65534:\n"))
	if opts.bash {
		addBash(t, r)
	}
	for _, name := range slices.Sorted(maps.Keys(opts.files)) {
		r.file(t, name, 0o644, []byte(opts.files[name]))
	}
	tarball := r.bytes(t)
	sum := sha256.New()
	sum.Write(tarball)
	for _, ch := range opts.changes {
		sum.Write([]byte(ch + "\n"))
	}
	name := repo + ":" + hex.EncodeToString(sum.Sum(nil))[:12]
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if _, err := c.ImageInspect(ctx, name); err == nil {
		return name
	}
	res, err := c.ImageImport(ctx, client.ImageImportSource{Source: bytes.NewReader(tarball), SourceName: "-"}, name,
		client.ImageImportOptions{Changes: append([]string{`CMD ["/bin/sh"]`}, opts.changes...)})
	if err != nil {
		t.Fatalf("importing image %s: %v", name, err)
	}
	defer res.Close()
	if err := jsonStreamError(res); err != nil {
		t.Fatalf("importing image %s: %v", name, err)
	}
	return name
}

// addBash puts the host's bash and the libraries ldd names into the image.
func addBash(t testing.TB, r *rootfs) {
	t.Helper()
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skipf("no bash on this machine to put into the test image: %v", err)
	}
	out, err := exec.Command("ldd", bash).Output()
	if err != nil {
		t.Skipf("ldd %s: %v", bash, err)
	}
	files := []string{bash}
	for _, line := range strings.Split(string(out), "\n") {
		for _, f := range strings.Fields(line) {
			if strings.HasPrefix(f, "/") {
				files = append(files, f)
			}
		}
	}
	for _, f := range files {
		real, err := filepath.EvalSymlinks(f)
		if err != nil {
			t.Fatal(err)
		}
		body, err := os.ReadFile(real)
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimPrefix(f, "/")
		if f == bash {
			name = "bin/bash"
		}
		ensureDirs(t, r, filepath.Dir(name))
		r.file(t, name, 0o755, body)
	}
}

// ensureDirs adds directory entries for dir and its parents.
func ensureDirs(t testing.TB, r *rootfs, dir string) {
	if dir == "." || dir == "" {
		return
	}
	ensureDirs(t, r, filepath.Dir(dir))
	r.dir(t, dir, 0o755)
}

// jsonStreamError reads an engine JSON message stream and returns the
// first error it reports.
func jsonStreamError(r io.Reader) error {
	dec := json.NewDecoder(r)
	for {
		var m struct {
			Error       string `json:"error"`
			ErrorDetail *struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if m.Error != "" {
			return errors.New(m.Error)
		}
		if m.ErrorDetail != nil && m.ErrorDetail.Message != "" {
			return errors.New(m.ErrorDetail.Message)
		}
	}
}

// pushImage tags image as target and pushes it to its registry.
func pushImage(t testing.TB, c *client.Client, image, target string, auth registry.AuthConfig) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if _, err := c.ImageTag(ctx, client.ImageTagOptions{Source: image, Target: target}); err != nil {
		t.Fatalf("tagging %s as %s: %v", image, target, err)
	}
	enc, err := authconfig.Encode(auth)
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.ImagePush(ctx, target, client.ImagePushOptions{RegistryAuth: enc})
	if err != nil {
		t.Fatalf("pushing %s: %v", target, err)
	}
	defer res.Close()
	if err := jsonStreamError(res); err != nil {
		t.Fatalf("pushing %s: %v", target, err)
	}
}

// removeImage removes an image from the engine (when it is there).
func removeImage(t testing.TB, c *client.Client, image string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := c.ImageRemove(ctx, image, client.ImageRemoveOptions{Force: true}); err != nil && !notFound(err) {
		t.Errorf("removing image %s: %v", image, err)
	}
}

// labelled lists what the engine still has with the label (key=value):
// containers, networks and volumes, by name.
func labelled(t testing.TB, c *client.Client, label string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	f := make(client.Filters).Add("label", label)
	var left []string
	cs, err := c.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	for _, ct := range cs.Items {
		left = append(left, "container "+containerName(ct.Names))
	}
	ns, err := c.NetworkList(ctx, client.NetworkListOptions{Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ns.Items {
		left = append(left, "network "+n.Name)
	}
	vs, err := c.VolumeList(ctx, client.VolumeListOptions{Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs.Items {
		left = append(left, "volume "+v.Name)
	}
	slices.Sort(left)
	return left
}

// freePort returns a TCP port on 127.0.0.1 nothing listens on now.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// uniqueName returns a name no other test run uses.
func uniqueName(prefix string) string {
	return fmt.Sprintf("%s-%d-%s", prefix, os.Getpid(), randomID()[:6])
}

// tarOf makes a tar stream of regular files (mode 0644; parents implied).
func tarOf(t testing.TB, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range slices.Sorted(maps.Keys(files)) {
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(files[name])), ModTime: time.Now()}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, files[name]); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// untarFiles reads the regular files of a tar stream by name.
func untarFiles(t testing.TB, r io.Reader) map[string]string {
	t.Helper()
	files := map[string]string{}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		if _, dup := files[hdr.Name]; dup {
			t.Errorf("entry %s is in the archive twice", hdr.Name)
		}
		if hdr.Typeflag != tar.TypeReg {
			files[hdr.Name] = ""
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[hdr.Name] = string(b)
	}
}
