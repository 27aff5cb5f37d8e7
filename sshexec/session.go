package sshexec

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// readSize is how much output one read takes from a session.
const readSize = 32 << 10

// proc is one remote command on a session of its own. Unlike
// ssh.Session, it reports the command's exit as soon as the server sends
// it, without waiting for the output to end: a background process can
// hold the output open long after.
type proc struct {
	ch     ssh.Channel
	exited chan struct{} // closed once the exit status came or the session ended
	once   sync.Once
	status exitStatus // set before exited is closed
}

// exitStatus is how a remote command ended.
type exitStatus struct {
	received bool
	code     int
	signal   string // the signal that killed it, without "SIG"
	message  string
}

// signalNumbers are the numbers of the signals RFC 4254 names.
var signalNumbers = map[string]int{
	"ABRT": 6, "ALRM": 14, "FPE": 8, "HUP": 1, "ILL": 4, "INT": 2, "KILL": 9,
	"PIPE": 13, "QUIT": 3, "SEGV": 11, "TERM": 15, "USR1": 10, "USR2": 12,
}

// exitCode turns the status into an exit code: the command's own, or 128 +
// the signal's number for a command killed by a signal, as shells report it.
func (s exitStatus) exitCode() (int, error) {
	switch {
	case !s.received:
		return -1, fmt.Errorf("the session ended without an exit status")
	case s.signal == "":
		return s.code, nil
	}
	if n, ok := signalNumbers[s.signal]; ok {
		return 128 + n, nil
	}
	return -1, fmt.Errorf("the command was killed by signal %s, which has no portable number (%s)", s.signal, s.message)
}

// start runs command (a line for the user's login shell) on a new
// session.
func (c *Client) start(command string) (*proc, error) {
	ch, reqs, err := c.ssh.OpenChannel("session", nil)
	if err != nil {
		return nil, c.connErr(fmt.Errorf("opening a session on %s: %w", c, err))
	}
	p := &proc{ch: ch, exited: make(chan struct{})}
	go p.serve(reqs)
	ok, err := ch.SendRequest("exec", true, ssh.Marshal(struct{ Command string }{command}))
	if err != nil || !ok {
		ch.Close()
		if err == nil {
			err = fmt.Errorf("the server refused to run a command")
		}
		return nil, c.connErr(fmt.Errorf("starting a command on %s: %w", c, err))
	}
	return p, nil
}

// serve reads the session's requests until it ends.
func (p *proc) serve(reqs <-chan *ssh.Request) {
	for r := range reqs {
		switch r.Type {
		case "exit-status":
			if len(r.Payload) >= 4 {
				p.exit(exitStatus{received: true, code: int(binary.BigEndian.Uint32(r.Payload))})
			}
		case "exit-signal":
			var m struct {
				Signal     string
				CoreDumped bool
				Message    string
				Lang       string
			}
			if ssh.Unmarshal(r.Payload, &m) == nil {
				p.exit(exitStatus{received: true, signal: strings.TrimPrefix(m.Signal, "SIG"), message: m.Message})
			}
		}
		if r.WantReply {
			_ = r.Reply(false, nil)
		}
	}
	p.exit(exitStatus{})
}

func (p *proc) exit(s exitStatus) {
	p.once.Do(func() {
		p.status = s
		close(p.exited)
	})
}

// copier copies a session's output stream to a writer.
type copier struct {
	done chan struct{} // closed when the stream ended
	err  error         // the first write error; read after done
}

// copyOutput copies r to w until r ends. If w fails, the rest is read and
// dropped so that the remote command does not block.
func copyOutput(r io.Reader, w io.Writer) *copier {
	c := &copier{done: make(chan struct{})}
	go func() {
		defer close(c.done)
		buf := make([]byte, readSize)
		for {
			n, err := r.Read(buf)
			if n > 0 && c.err == nil {
				_, c.err = w.Write(buf[:n])
			}
			if err != nil {
				return
			}
		}
	}()
	return c
}

// quote makes s one word for a POSIX shell.
func quote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// shellCommand is the command line that runs script with /bin/sh, with
// name as $0 and args as $1….
func shellCommand(script, name string, args ...string) string {
	var b strings.Builder
	b.WriteString("exec /bin/sh -c ")
	b.WriteString(quote(script))
	b.WriteString(" " + name)
	for _, a := range args {
		b.WriteString(" " + quote(a))
	}
	return b.String()
}

// Command runs script with /bin/sh on the remote host, args as $1…, stdin
// as its standard input (nil: none), and returns its exit code (128 + n
// for a signal). Unlike Run it does not track the command's processes:
// use it for short housekeeping commands. When ctx ends, the session is
// closed and an error returned; the command may go on running.
func (c *Client) Command(ctx context.Context, script string, args []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	p, err := c.start(shellCommand(script, "berth", args...))
	if err != nil {
		return -1, err
	}
	defer p.ch.Close()
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	outCopy := copyOutput(p.ch, stdout)
	errCopy := copyOutput(p.ch.Stderr(), stderr)
	go func() {
		if stdin != nil {
			_, _ = io.Copy(p.ch, stdin)
		}
		_ = p.ch.CloseWrite()
	}()
	select {
	case <-p.exited:
	case <-ctx.Done():
		return -1, fmt.Errorf("command on %s: %w", c, ctx.Err())
	}
	// The output ends with the command unless something it started in the
	// background holds it.
	timer := time.NewTimer(escapedOutputWait)
	defer timer.Stop()
	for _, cp := range []*copier{outCopy, errCopy} {
		select {
		case <-cp.done:
		case <-timer.C:
		}
	}
	code, err := p.status.exitCode()
	if err != nil {
		return -1, c.connErr(fmt.Errorf("command on %s: %w", c, err))
	}
	return code, nil
}

// Output runs script like Command and returns its standard output. A
// non-zero exit is an error holding what the script wrote to stderr.
func (c *Client) Output(ctx context.Context, script string, args ...string) ([]byte, error) {
	var stdout bytes.Buffer
	stderr := &limitedBuffer{max: 4 << 10}
	code, err := c.Command(ctx, script, args, nil, &stdout, stderr)
	if err != nil {
		return stdout.Bytes(), err
	}
	if code != 0 {
		return stdout.Bytes(), &RemoteError{Target: c.target, ExitCode: code, Stderr: stderr.String()}
	}
	return stdout.Bytes(), nil
}

// RemoteError is a remote command that exited non-zero.
type RemoteError struct {
	Target   string
	ExitCode int
	Stderr   string
}

func (e *RemoteError) Error() string {
	msg := strings.TrimSpace(e.Stderr)
	if msg == "" {
		msg = "no message"
	}
	return fmt.Sprintf("on %s: exit status %d: %s", e.Target, e.ExitCode, msg)
}

// limitedBuffer keeps the first max bytes written to it.
type limitedBuffer struct {
	mu      sync.Mutex
	max     int
	buf     bytes.Buffer
	dropped bool
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	room := l.max - l.buf.Len()
	if room < len(p) {
		l.dropped = true
		if room > 0 {
			l.buf.Write(p[:room])
		}
		return len(p), nil
	}
	l.buf.Write(p)
	return len(p), nil
}

func (l *limitedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dropped {
		return l.buf.String() + "…"
	}
	return l.buf.String()
}
