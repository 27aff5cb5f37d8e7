// Command profplugin is berth's shell executor served as a plugin, as
// `berth __serve-executor shell` serves it, but able to write CPU profiles
// of itself. It is only for `go run ./bench -profile DIR`; the figures of
// the benchmarks come from the real berth binary.
//
//	profplugin PREFIX [from-start]
//
// Each SIGUSR1 starts or stops a CPU profile; profiles are written to
// PREFIX-<pid>-<n>.pprof. With from-start, the first profile starts at once.
package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/shell"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: profplugin PREFIX [from-start]")
		os.Exit(2)
	}
	p := &profiler{prefix: os.Args[1]}
	if len(os.Args) > 2 && os.Args[2] == "from-start" {
		p.toggle()
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGUSR1)
	go func() {
		for range sigs {
			p.toggle()
		}
	}()
	sdk.Serve(shell.New())
}

// profiler starts and stops CPU profiles; only its signal goroutine (or
// main, before that starts) uses it.
type profiler struct {
	prefix string
	n      int
	f      *os.File
}

func (p *profiler) toggle() {
	if p.f != nil {
		pprof.StopCPUProfile()
		if err := p.f.Close(); err != nil {
			slog.Error("closing the CPU profile", "error", err)
		}
		// The harness waits for this name, so it appears only once complete.
		if err := os.Rename(p.f.Name(), p.f.Name()+".pprof"); err != nil {
			slog.Error("naming the CPU profile", "error", err)
		}
		p.f = nil
		p.n++
		return
	}
	f, err := os.Create(fmt.Sprintf("%s-%d-%d", p.prefix, os.Getpid(), p.n))
	if err != nil {
		slog.Error("creating the CPU profile", "error", err)
		return
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		slog.Error("starting the CPU profile", "error", err)
		f.Close()
		return
	}
	p.f = f
}
