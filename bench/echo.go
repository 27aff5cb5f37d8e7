package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// echoArg makes the harness binary serve as the far end of the unix
// socket baseline of benchmark (a): it echoes what it reads on fd 3.
const echoArg = "__bench-echo"

// echoMsgSize is the size of the message the baseline sends back and forth.
const echoMsgSize = 64

// serveEcho is the child's side: read a message, send it back, until EOF.
func serveEcho() error {
	c, err := net.FileConn(os.NewFile(3, "echo-socket"))
	if err != nil {
		return fmt.Errorf("echo: opening the socket: %w", err)
	}
	buf := make([]byte, echoMsgSize)
	for {
		if _, err := io.ReadFull(c, buf); err != nil {
			if err == io.EOF {
				return nil
			}
			return fmt.Errorf("echo: reading: %w", err)
		}
		if _, err := c.Write(buf); err != nil {
			return fmt.Errorf("echo: writing: %w", err)
		}
	}
}

// echoPeer is the harness's side of the baseline: a child process (this
// binary again) at the other end of a unix socket pair. Both ends use Go's
// net package (the runtime's poller), as gRPC does.
type echoPeer struct {
	cmd  *exec.Cmd
	conn net.Conn
	buf  []byte
}

func startEcho() (*echoPeer, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	mine, theirs := os.NewFile(uintptr(fds[0]), "echo-host"), os.NewFile(uintptr(fds[1]), "echo-child")
	self, err := os.Executable()
	if err != nil {
		mine.Close()
		theirs.Close()
		return nil, fmt.Errorf("finding the harness binary: %w", err)
	}
	cmd := exec.Command(self, echoArg)
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.Stderr = os.Stderr
	err = cmd.Start()
	theirs.Close()
	if err != nil {
		mine.Close()
		return nil, fmt.Errorf("starting the echo process: %w", err)
	}
	conn, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("opening the echo socket: %w", err)
	}
	return &echoPeer{cmd: cmd, conn: conn, buf: make([]byte, echoMsgSize)}, nil
}

// roundTrip sends one message and waits for it to come back.
func (e *echoPeer) roundTrip() (time.Duration, error) {
	t := time.Now()
	if _, err := e.conn.Write(e.buf); err != nil {
		return 0, fmt.Errorf("echo: writing: %w", err)
	}
	if _, err := io.ReadFull(e.conn, e.buf); err != nil {
		return 0, fmt.Errorf("echo: reading: %w", err)
	}
	return time.Since(t), nil
}

func (e *echoPeer) close() error {
	e.conn.Close()
	if err := e.cmd.Wait(); err != nil {
		return fmt.Errorf("echo process: %w", err)
	}
	return nil
}
