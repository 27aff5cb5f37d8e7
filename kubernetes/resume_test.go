package kubernetes

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/berthci/berth/internal/syncbuf"
	"github.com/berthci/berth/sdk"
)

// cuttingProxy forwards TCP connections to the API server and cuts each
// one (both ends, no goodbye) once it has carried limit bytes in either
// direction: what a load balancer or a restarting API server does to a long
// exec. It listens on 127.0.0.1; cuts counts the connections it cut.
type cuttingProxy struct {
	ln    net.Listener
	to    string
	limit int64
	cuts  atomic.Int32
	// maxCuts, when above 0, is how many connections are cut: those
	// opened after that many cuts are not.
	maxCuts atomic.Int32
	wg      sync.WaitGroup

	mu    sync.Mutex
	conns []net.Conn
}

func newCuttingProxy(t *testing.T, to string, limit int64) *cuttingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cuttingProxy{ln: ln, to: to, limit: limit}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() {
		ln.Close()
		// The client keeps idle connections open: end them.
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *cuttingProxy) serve() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		p.conns = append(p.conns, client)
		p.mu.Unlock()
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.forward(client)
		}()
	}
}

func (p *cuttingProxy) forward(client net.Conn) {
	defer client.Close()
	server, err := net.Dial("tcp", p.to)
	if err != nil {
		return
	}
	defer server.Close()
	p.mu.Lock()
	p.conns = append(p.conns, server)
	p.mu.Unlock()
	// Each direction stops at limit bytes; the first to get there cuts the
	// connection (RST, not FIN: it just dies).
	limit := p.limit
	if m := p.maxCuts.Load(); m > 0 && p.cuts.Load() >= m {
		limit = math.MaxInt64
	}
	var once sync.Once
	cut := func() {
		once.Do(func() {
			p.cuts.Add(1)
			for _, c := range []net.Conn{client, server} {
				if tcp, ok := c.(*net.TCPConn); ok {
					_ = tcp.SetLinger(0)
				}
				c.Close()
			}
		})
	}
	up := make(chan struct{})
	go func() {
		defer close(up)
		if n, _ := io.Copy(server, io.LimitReader(client, limit)); n == limit {
			cut()
		}
		server.Close()
	}()
	if n, _ := io.Copy(client, io.LimitReader(server, limit)); n == limit {
		cut()
	}
	client.Close()
	<-up
}

// cutExecutor returns two executors for the test cluster: direct, and cut,
// which reaches the API server through a cuttingProxy that cuts every
// connection after limit bytes. A job prepared by either runs with both.
func cutExecutor(t *testing.T, limit int64) (direct, cut *Executor, proxy *cuttingProxy) {
	t.Helper()
	path, _ := testCluster(t)
	rc, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	apiServer := strings.TrimPrefix(rc.Host, "https://")
	if _, _, err := net.SplitHostPort(apiServer); err != nil {
		t.Skipf("the API server address %q is not host:port", rc.Host)
	}
	proxy = newCuttingProxy(t, apiServer, limit)
	direct, _ = testExecutor(t, nil)
	cut, _ = testExecutor(t, map[string]any{"host": "https://" + proxy.ln.Addr().String()})
	return direct, cut, proxy
}

// TestBrokenExecConnectionIsResumed: a step's exec goes through a proxy
// that cuts every connection after 6 MiB; the step's 20 MB of stdout and
// its stderr arrive whole and in order, and its exit code is the step's.
func TestBrokenExecConnectionIsResumed(t *testing.T) {
	direct, e, proxy := cutExecutor(t, 6<<20)
	h := prepare(t, direct, sdk.Job{Image: sdk.Image{Name: busyboxImage}})
	var stdout, stderr syncbuf.Buffer
	code, err := e.Run(t.Context(), h, sdk.Step{Name: "script", Shell: "sh",
		Script: "echo begin >&2\nseq 1 2500000\necho end >&2\nexit 5\n"}, sdk.Output{Stdout: &stdout, Stderr: &stderr})
	if err != nil || code != 5 {
		t.Fatalf("Run = %d, %v; want exit 5 (stderr %q)", code, err, stderr.String())
	}
	var want strings.Builder
	for i := 1; i <= 2500000; i++ {
		fmt.Fprintf(&want, "%d\n", i)
	}
	got := stdout.String()
	if got != want.String() {
		t.Errorf("stdout: %d bytes (sha256 %x), want %d bytes (sha256 %x)", len(got), sha256.Sum256([]byte(got)), want.Len(), sha256.Sum256([]byte(want.String())))
	}
	if stderr.String() != "begin\nend\n" {
		t.Errorf("stderr %q; want begin and end", stderr.String())
	}
	if proxy.cuts.Load() == 0 {
		t.Error("the proxy cut no connection: the test did not test a resume")
	}
	t.Logf("%d connections cut", proxy.cuts.Load())
}

// bigFile is n bytes that do not compress, the same for a given seed.
func bigFile(n int, seed byte) []byte {
	b := make([]byte, n)
	rng := rand.NewChaCha8([32]byte{seed})
	_, _ = rng.Read(b)
	return b
}

// TestBrokenScriptTransferIsResent: the connection breaks while an 8 MiB
// script is on its way into the pod; the step then runs once, whole, with
// its output and exit code (before, the wrapper reported the incomplete
// script as the step's exit 126).
func TestBrokenScriptTransferIsResent(t *testing.T) {
	direct, e, proxy := cutExecutor(t, 6<<20)
	proxy.maxCuts.Store(1)
	h := prepare(t, direct, sdk.Job{Image: sdk.Image{Name: busyboxImage}})
	var script strings.Builder
	for script.Len() < 8<<20 {
		script.WriteString("# " + strings.Repeat("x", 77) + "\n")
	}
	script.WriteString("echo run >> ran\necho hello\nexit 4\n")
	var stdout, stderr syncbuf.Buffer
	code, err := e.Run(t.Context(), h, sdk.Step{Name: "script", Shell: "sh", Script: script.String()}, sdk.Output{Stdout: &stdout, Stderr: &stderr})
	if err != nil || code != 4 || stdout.String() != "hello\n" {
		t.Errorf("Run = %d, %v, stdout %q, stderr %q; want 4 and hello", code, err, stdout.String(), stderr.String())
	}
	if proxy.cuts.Load() != 1 {
		t.Errorf("the proxy cut %d connections; want the first", proxy.cuts.Load())
	}
	if code, out, _, err := run(t, t.Context(), direct, h, "cat ran"); err != nil || code != 0 || out != "run\n" {
		t.Errorf("the step's runs: %q (exit %d, %v); want one", out, code, err)
	}
}

// tarFiles makes a tar archive of files, name then contents, in order.
func tarFiles(t testing.TB, files ...any) *bytes.Buffer {
	t.Helper()
	var archive bytes.Buffer
	tw := tar.NewWriter(&archive)
	for i := 0; i+1 < len(files); i += 2 {
		data := files[i+1].([]byte)
		if err := tw.WriteHeader(&tar.Header{Name: files[i].(string), Mode: 0o644, Size: int64(len(data))}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return &archive
}

// withBigFile prepares a job (with direct) whose build folder holds
// "big", 20 MiB, and returns the handle and the file's contents.
func withBigFile(t *testing.T, direct *Executor, seed byte) (sdk.Handle, []byte) {
	t.Helper()
	h := prepare(t, direct, sdk.Job{Image: sdk.Image{Name: busyboxImage}})
	big := bigFile(20<<20, seed)
	if err := direct.Upload(t.Context(), h, "", tarFiles(t, "big", big)); err != nil {
		t.Fatalf("Upload: %v", err)
	}
	return h, big
}

// TestBrokenUploadIsResumed: an upload of 20 MiB through a proxy that cuts
// every connection after 16 MiB arrives whole in the pod. (An upload's
// exec moves on by less than the proxy lets through: what is still on its
// way through the API server, kubelet and runtime when the connection dies
// is lost, about 6 MiB here. A lower limit makes the test slow, not
// different.)
func TestBrokenUploadIsResumed(t *testing.T) {
	direct, e, proxy := cutExecutor(t, 16<<20)
	h := prepare(t, direct, sdk.Job{Image: sdk.Image{Name: busyboxImage}})
	big := bigFile(20<<20, 1)
	archive := tarFiles(t, "small", []byte("small\n"), "dir/big", big, "last", []byte("last\n"))
	if err := e.Upload(t.Context(), h, "up", archive); err != nil {
		t.Fatalf("Upload: %v", err)
	}
	if proxy.cuts.Load() == 0 {
		t.Error("the proxy cut no connection: the test did not test a resume")
	}
	code, stdout, stderr, err := run(t, t.Context(), direct, h, "cd up && cat small last && sha256sum dir/big && ls -a ../../.berth-output")
	want := fmt.Sprintf("small\nlast\n%x  dir/big\n", sha256.Sum256(big))
	if err != nil || code != 0 || !strings.HasPrefix(stdout, want) {
		t.Fatalf("in the pod: exit %d, %v, stdout %q, stderr %q; want %q first", code, err, stdout, stderr, want)
	}
	if strings.Contains(stdout, ".tar") {
		t.Errorf("the pod's copy of the archive is left behind: %q", stdout)
	}
	t.Logf("%d connections cut", proxy.cuts.Load())
}

// TestBrokenDownloadIsResumed: a download of 20 MiB through a proxy that
// cuts every connection after 6 MiB arrives whole.
func TestBrokenDownloadIsResumed(t *testing.T) {
	direct, e, proxy := cutExecutor(t, 6<<20)
	h, big := withBigFile(t, direct, 2)
	if code, _, stderr, err := run(t, t.Context(), direct, h, "echo small > small"); err != nil || code != 0 {
		t.Fatalf("the step: exit %d, %v, stderr %q", code, err, stderr)
	}
	cutsBefore := proxy.cuts.Load()
	var got bytes.Buffer
	if err := e.Download(t.Context(), h, []string{"small", "big"}, &got); err != nil {
		t.Fatalf("Download: %v", err)
	}
	if proxy.cuts.Load() == cutsBefore {
		t.Error("the proxy cut no connection during the download: the test did not test a resume")
	}
	files := map[string][]byte{}
	tr := tar.NewReader(&got)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("the downloaded archive: %v", err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("the downloaded archive, entry %q: %v", hdr.Name, err)
		}
		files[hdr.Name] = b
	}
	if string(files["small"]) != "small\n" || !bytes.Equal(files["big"], big) || len(files) != 2 {
		t.Errorf("downloaded %d entries, small %q, big %d bytes (same: %v); want small and the 20 MiB uploaded", len(files), files["small"], len(files["big"]), bytes.Equal(files["big"], big))
	}
	code, stdout, _, err := run(t, t.Context(), direct, h, "ls -a ../.berth-output")
	if err != nil || code != 0 || strings.Contains(stdout, ".tar") {
		t.Errorf("the pod's copy of the archive: exit %d, %v, ls %q; want it removed", code, err, stdout)
	}
}

// TestResumedDownloadOfChangedFilesFails: when a file changes between the
// broken stream and the archive made again, the download fails saying so
// rather than splicing two archives together.
func TestResumedDownloadOfChangedFilesFails(t *testing.T) {
	direct, e, _ := cutExecutor(t, 6<<20)
	h, _ := withBigFile(t, direct, 3)
	// A step keeps appending to "grow", archived first, while the
	// download runs.
	ctx, cancel := context.WithCancel(t.Context())
	stepDone := make(chan struct{})
	var stdout syncbuf.Buffer
	go func() {
		defer close(stepDone)
		direct.Run(ctx, h, sdk.Step{Name: "grow", Shell: "sh", GracePeriod: time.Second,
			Script: "echo 0 > grow; echo ready; i=0; while [ $i -lt 20000 ]; do echo $i >> grow; i=$((i+1)); sleep 0.01; done"},
			sdk.Output{Stdout: &stdout, Stderr: io.Discard})
	}()
	for !strings.Contains(stdout.String(), "ready") {
		select {
		case <-stepDone:
			t.Fatalf("the step ended early: %q", stdout.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	err := e.Download(t.Context(), h, []string{"grow", "big"}, io.Discard)
	cancel()
	<-stepDone
	if err == nil || !strings.Contains(err.Error(), "the files changed since the download began") {
		t.Errorf("Download while a file changes, through cut connections: %v; want an error saying the files changed", err)
	}
}
