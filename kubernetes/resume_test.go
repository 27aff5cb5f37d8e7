package kubernetes

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/berthci/berth/internal/syncbuf"
	"github.com/berthci/berth/sdk"
)

// cuttingProxy forwards TCP connections to the API server and cuts each
// one (both ends, no goodbye) once it has carried limit bytes towards the
// client: what a load balancer or a restarting API server does to a long
// exec. It listens on 127.0.0.1; cuts counts the connections it cut.
type cuttingProxy struct {
	ln    net.Listener
	to    string
	limit int64
	cuts  atomic.Int32
	wg    sync.WaitGroup

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
	go func() {
		_, _ = io.Copy(server, client)
		server.Close()
	}()
	n, _ := io.Copy(client, io.LimitReader(server, p.limit))
	if n == p.limit {
		p.cuts.Add(1)
		// RST, not FIN: the connection just dies.
		if tcp, ok := client.(*net.TCPConn); ok {
			_ = tcp.SetLinger(0)
		}
	}
}

// TestBrokenExecConnectionIsResumed: a step's exec goes through a proxy
// that cuts every connection after 6 MiB; the step's 20 MB of stdout and
// its stderr arrive whole and in order, and its exit code is the step's.
func TestBrokenExecConnectionIsResumed(t *testing.T) {
	path, _ := testCluster(t)
	rc, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	apiServer := strings.TrimPrefix(rc.Host, "https://")
	if _, _, err := net.SplitHostPort(apiServer); err != nil {
		t.Skipf("the API server address %q is not host:port", rc.Host)
	}
	proxy := newCuttingProxy(t, apiServer, 6<<20)
	e, _ := testExecutor(t, map[string]any{"host": "https://" + proxy.ln.Addr().String()})
	h := prepare(t, e, sdk.Job{Image: sdk.Image{Name: busyboxImage}})
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
