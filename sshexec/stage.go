package sshexec

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	// escapedOutputWait is how long a stage's output is still read after
	// its process group is gone, for processes that left the group and
	// still hold it.
	escapedOutputWait = 2 * time.Second
	// killWait bounds how long a process group may take to die after
	// SIGKILL.
	killWait = 10 * time.Second
	// startWait bounds how long a cancelled stage that has not yet
	// reported its process group is waited for before its session is
	// closed.
	startWait = 30 * time.Second
)

// Stage is one script to run in a job's build directory.
type Stage struct {
	// Dir is the build directory (absolute, as MakeWorkspace returns it);
	// the script runs there and its file goes to Dir + ".tmp".
	Dir string
	// Script is the whole script. It is sent over the session's stdin,
	// never on a command line.
	Script string
	// Shell runs the script: "bash" (with --noprofile --norc), "sh", or ""
	// for bash when the host has it and sh otherwise. A stage for bash on a
	// host without bash fails to start.
	Shell string
	// GracePeriod is how long the stage gets between SIGTERM and SIGKILL
	// when it is cancelled.
	GracePeriod time.Duration
	// Stdout and Stderr get the script's output as it comes (nil: dropped).
	Stdout, Stderr io.Writer
}

// stageScript is the wrapper a stage's session runs with /bin/sh. It
// stores the script that arrives on stdin, checks its length, leaves a
// marker file naming its process group, tells the client its process
// group on stderr (one line with a nonce, before anything the script
// writes), then becomes the script's shell: the shell keeps the session's
// process, which sshd made the leader of a new session and process group,
// so the stage's process group is the shell's pid.
//
// $1 nonce, $2 build directory, $3 temporary directory, $4 shell, $5 the
// script's length in bytes.
const stageScript = `n=$1 d=$2 t=$3 s=$4 len=$5
case $s in
bash) command -v bash >/dev/null 2>&1 || { echo "bash is not installed (the script is written for bash)" >&2; exit 127; } ;;
sh) ;;
'') if command -v bash >/dev/null 2>&1; then s=bash; else s=sh; fi ;;
*) echo "unknown shell $s" >&2; exit 127 ;;
esac
cd "$d" || exit 127
f=$t/stage-$$.sh
(umask 077 && cat >"$f") || { rm -f "$f"; exit 127; }
got=$(wc -c <"$f") || got=-1
if [ "$((got))" -ne "$len" ]; then rm -f "$f"; echo "the script arrived incomplete ($got of $len bytes)" >&2; exit 127; fi
: >"$t/stage-$$.pgid" || { rm -f "$f"; exit 127; }
printf 'berth-stage-%s %s\n' "$n" "$$" >&2
if [ "$s" = bash ]; then exec bash --noprofile --norc "$f" </dev/null; fi
exec sh "$f" </dev/null
`

// stageLauncher runs stageScript ($1, the rest its arguments) as the
// leader of its process group, which a cancel signals: sshd makes a
// session's command the leader of a new session and group, Dropbear runs
// it as a child of the session's leader, so there the script is started
// again under setsid (same pid, a session and group of its own). Without
// /proc or setsid it runs as it is.
const stageLauncher = `s_text=$1; shift
if [ -r "/proc/$$/stat" ] && command -v setsid >/dev/null 2>&1; then
  s_pg() { set -f; set -- $1; set +f; s_g=$3; }
  read -r s_l <"/proc/$$/stat"
  s_pg "${s_l##*) }"
  if [ "$s_g" != "$$" ]; then exec setsid /bin/sh -c "$s_text" berth-stage "$@"; fi
fi
eval "$s_text"
`

// aliveFunc defines alive G: whether a process of group G is running.
// Zombies do not count (they have ended and only wait to be reaped, which
// may never happen under a PID 1 that does not reap).
const aliveFunc = `alive() {
  kill -0 -"$1" 2>/dev/null || return 1
  [ -r /proc/self/stat ] || return 0
  for a_f in /proc/[0-9]*/stat; do
    { read -r a_l <"$a_f"; } 2>/dev/null || continue
    set -f
    set -- "$1" ${a_l##*") "}
    set +f
    [ "$4" = "$1" ] && [ "$2" != Z ] && [ "$2" != X ] && return 0
  done
  return 1
}
`

// reapFunc defines reap G N T: waits up to N tenths of a second for group
// G to end, kills what is left of it, waits for that to end, and removes
// its files from T.
const reapFunc = aliveFunc + `reap() {
  r_i=0
  while [ "$r_i" -lt "$2" ] && alive "$1"; do sleep 0.1; r_i=$((r_i+1)); done
  kill -KILL -"$1" 2>/dev/null
  r_i=0
  while alive "$1"; do
    if [ "$r_i" -ge 100 ]; then echo "processes of group $1 still run 10 s after SIGKILL" >&2; return 1; fi
    sleep 0.1; r_i=$((r_i+1))
  done
  rm -f "$3/stage-$1.sh" "$3/stage-$1.pgid"
}
`

// Run runs a stage on a session of its own and returns the script's exit
// code (128 + n when a signal killed it). Once the script's shell has
// exited, whatever it left running in its process group is killed, and
// Run returns when that is gone; output of processes that left the group
// is read for escapedOutputWait more.
//
// When ctx ends, the process group gets SIGTERM, then SIGKILL after
// GracePeriod (what the shell leaves behind gets the rest of the grace
// period); Run returns once nothing of the group runs, with the exit code
// and an error wrapping ctx.Err(). An error without ctx's end means the
// stage could not start or its end is unknown (a lost connection).
func (c *Client) Run(ctx context.Context, st Stage) (int, error) {
	if !strings.HasPrefix(st.Dir, "/") {
		return -1, fmt.Errorf("stage on %s: the build directory %q is not an absolute path", c, st.Dir)
	}
	stdout, stderr := st.Stdout, st.Stderr
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	nonceBytes := make([]byte, 8)
	_, _ = rand.Read(nonceBytes)
	nonce := hex.EncodeToString(nonceBytes)
	tmp := st.Dir + ".tmp"
	p, err := c.start(shellCommand(stageLauncher, "berth-stage", stageScript, nonce, st.Dir, tmp, st.Shell, strconv.Itoa(len(st.Script))))
	if err != nil {
		return -1, err
	}
	defer p.ch.Close()

	pre := newPreamble("berth-stage-"+nonce+" ", stderr)
	outCopy := copyOutput(p.ch, stdout)
	errCopy := copyOutput(p.ch.Stderr(), pre)
	go func() {
		if _, err := io.Copy(p.ch, strings.NewReader(st.Script)); err == nil {
			_ = p.ch.CloseWrite()
		}
	}()

	// Housekeeping goes on after ctx has ended, within its own bounds.
	bg := context.WithoutCancel(ctx)
	stopped, reaped := false, false
	var stopErr, reapErr error
	select {
	case <-p.exited:
	case <-ctx.Done():
		stopped = true
		reaped, stopErr = c.stop(bg, p, pre, errCopy, st.GracePeriod, tmp)
	}
	if !reaped {
		if pgid, ok := awaitGroup(pre, errCopy, escapedOutputWait); ok {
			reapErr = c.reap(bg, pgid, 0, tmp)
		}
	}
	outErr, errErr := c.drain(p, outCopy, errCopy)

	if !pre.seen() {
		if stopped {
			return -1, fmt.Errorf("stage on %s stopped before it started: %w", c, ctx.Err())
		}
		msg := strings.TrimSpace(pre.pending())
		if msg == "" {
			msg = "no message"
		}
		return -1, c.connErr(fmt.Errorf("the stage did not start on %s: %s", c, msg))
	}
	code, codeErr := p.status.exitCode()
	switch {
	case stopErr != nil:
		return code, errors.Join(stopErr, ctx.Err())
	case codeErr != nil:
		return -1, c.connErr(fmt.Errorf("stage on %s: %w; whether it ended is unknown", c, codeErr))
	case reapErr != nil:
		return code, reapErr
	case stopped:
		return code, fmt.Errorf("stage on %s stopped: %w", c, ctx.Err())
	case outErr != nil || errErr != nil:
		return code, fmt.Errorf("output of the stage on %s was lost: %w", c, errors.Join(outErr, errErr))
	}
	return code, nil
}

// awaitGroup returns the stage's process group once the wrapper has
// reported it. The report comes on stderr before anything the script
// writes, but may arrive after the exit status (sshd sends buffered output
// after it): it is waited for until stderr ends, at most wait.
func awaitGroup(pre *preamble, errCopy *copier, wait time.Duration) (int, bool) {
	select {
	case <-pre.started:
	case <-errCopy.done:
	case <-time.After(wait):
	}
	return pre.group()
}

// stop stops a running stage: SIGTERM to its group, the grace period,
// then SIGKILL. It returns once the stage's shell has exited and nothing
// of its group runs (reaped), or with an error when it could not make it.
func (c *Client) stop(ctx context.Context, p *proc, pre *preamble, errCopy *copier, grace time.Duration, tmp string) (reaped bool, err error) {
	pgid, ok := awaitGroup(pre, errCopy, startWait)
	if !ok {
		select {
		case <-p.exited:
			return false, nil // it ended before it started
		default:
		}
		// Not started: closing the session cuts the script short, and the
		// wrapper refuses to run a script that did not arrive whole.
		p.ch.Close()
		return false, fmt.Errorf("stage on %s did not report its process group within %s of the cancel; closed its session", c, startWait)
	}
	deadline := time.Now().Add(grace)
	termCtx, cancel := context.WithTimeout(ctx, killWait)
	_, err = c.Output(termCtx, `kill -TERM -"$1" 2>/dev/null; exit 0`, strconv.Itoa(pgid))
	cancel()
	if err != nil {
		c.log.Warn("ssh: could not send SIGTERM to a cancelled stage; killing it", "target", c.target, "pgid", pgid, "error", err)
		deadline = time.Now()
	}
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case <-p.exited:
	case <-timer.C:
	}
	// What is left of the group gets the rest of the grace period.
	if err := c.reap(ctx, pgid, max(time.Until(deadline), 0), tmp); err != nil {
		return true, err
	}
	select {
	case <-p.exited:
		return true, nil
	case <-time.After(killWait):
		p.ch.Close()
		return true, fmt.Errorf("stage on %s: its shell (process group %d) did not report its end %s after SIGKILL", c, pgid, killWait)
	}
}

// reap waits up to wait for process group pgid to end, SIGKILLs what is
// left and waits until nothing of it runs.
func (c *Client) reap(ctx context.Context, pgid int, wait time.Duration, tmp string) error {
	tenths := int((wait + 99*time.Millisecond) / (100 * time.Millisecond))
	ctx, cancel := context.WithTimeout(ctx, wait+killWait+30*time.Second)
	defer cancel()
	_, err := c.Output(ctx, reapFunc+`reap "$1" "$2" "$3"`, strconv.Itoa(pgid), strconv.Itoa(tenths), tmp)
	if err != nil {
		return fmt.Errorf("stopping process group %d of the stage on %s: %w", pgid, c, err)
	}
	return nil
}

// drain waits for the end of a stage's output, at most escapedOutputWait
// once its process group is gone; then the session is closed.
func (c *Client) drain(p *proc, outCopy, errCopy *copier) (outErr, errErr error) {
	timer := time.NewTimer(escapedOutputWait)
	defer timer.Stop()
	for _, cp := range []*copier{outCopy, errCopy} {
		select {
		case <-cp.done:
		case <-timer.C:
			c.log.Warn("ssh: a process that left the stage's process group still holds its output; no longer reading it", "target", c.target)
			p.ch.Close()
			<-cp.done
		}
	}
	return outCopy.err, errCopy.err
}

// preamble finds the wrapper's line naming the stage's process group on
// stderr (it may follow a login script's chatter, which is held back until
// then); everything else is passed on.
type preamble struct {
	marker  []byte
	w       io.Writer
	started chan struct{} // closed when the marker line came

	mu    sync.Mutex
	done  bool // no longer looking for the marker
	found bool
	pgid  int
	buf   bytes.Buffer // stderr before the marker line
}

// maxPreamble bounds what is kept of stderr while looking for the marker.
const maxPreamble = 64 << 10

func newPreamble(marker string, w io.Writer) *preamble {
	return &preamble{marker: []byte(marker), w: w, started: make(chan struct{})}
}

func (p *preamble) Write(b []byte) (int, error) {
	p.mu.Lock()
	if p.done {
		p.mu.Unlock()
		return p.w.Write(b)
	}
	p.buf.Write(b)
	data := p.buf.Bytes()
	var flush []byte
	if i := bytes.Index(data, p.marker); i >= 0 {
		end := bytes.IndexByte(data[i:], '\n')
		if end < 0 {
			p.mu.Unlock()
			return len(b), nil // the rest of the line is yet to come
		}
		if pgid, err := strconv.Atoi(string(data[i+len(p.marker) : i+end])); err == nil && pgid > 1 {
			p.pgid, p.found = pgid, true
			close(p.started)
		}
		flush = append(bytes.Clone(data[:i]), data[i+end+1:]...)
		p.done = true
		p.buf.Reset()
	} else if p.buf.Len() > maxPreamble {
		flush = bytes.Clone(data)
		p.done = true
		p.buf.Reset()
	}
	p.mu.Unlock()
	if len(flush) > 0 {
		if _, err := p.w.Write(flush); err != nil {
			return 0, err
		}
	}
	return len(b), nil
}

// group returns the stage's process group once the wrapper reported it.
func (p *preamble) group() (int, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pgid, p.found
}

func (p *preamble) seen() bool {
	_, ok := p.group()
	return ok
}

// pending is what stderr held before the marker, when none came.
func (p *preamble) pending() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.buf.String()
}
