package qemu

import (
	"bufio"
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"time"
)

const (
	// probeInterval is how often a new probe of the guest's SSH server
	// starts while the guest boots.
	probeInterval = 250 * time.Millisecond
	// maxProbes bounds the probes waiting at once.
	maxProbes = 16
	// probeWait bounds how long one probe waits for the server's greeting.
	probeWait = time.Minute
)

// errVMExited is awaitBanner's answer when QEMU exited first.
var errVMExited = errors.New("the VM ended")

// awaitBanner waits until the guest's SSH server greets through the
// forwarded port addr.
//
// Until the guest's network is up, QEMU's user networking accepts a
// connection to the forwarded port and holds it silently while it tries
// to reach the guest, so one probe with a timeout would wait out that
// timeout even when the guest came up just after it began. Instead a new
// probe starts every probeInterval and the first greeting wins. A probe the
// guest refuses (network up, SSH server not yet) ends at once.
func awaitBanner(ctx context.Context, addr string, vmDone <-chan struct{}) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	greeted := make(chan struct{})
	var once sync.Once
	slots := make(chan struct{}, maxProbes)
	ticker := time.NewTicker(probeInterval)
	defer ticker.Stop()
	for {
		select {
		case slots <- struct{}{}:
			wg.Go(func() {
				defer func() { <-slots }()
				if probeBanner(ctx, addr) {
					once.Do(func() { close(greeted) })
				}
			})
		default: // maxProbes are waiting already
		}
		select {
		case <-greeted:
			return nil
		case <-vmDone:
			return errVMExited
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C:
		}
	}
}

// probeBanner connects to addr and says whether an SSH server's greeting
// ("SSH-" at the start of a line; other lines may come first) arrives.
func probeBanner(ctx context.Context, addr string) bool {
	ctx, cancel := context.WithTimeout(ctx, probeWait)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	r := bufio.NewReaderSize(conn, 512)
	for range 20 {
		line, err := r.ReadSlice('\n')
		if strings.HasPrefix(string(line), "SSH-") {
			return true
		}
		if err != nil {
			return false
		}
	}
	return false
}
