package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/berthci/berth/host/gitlab"
	"github.com/berthci/berth/host/spool"
)

// maxPatch is the most trace bytes one PATCH carries (gitlab-runner's
// DefaultTracePatchLimit).
const maxPatch = 1 << 20

// acceptTimeout is how long GitLab may answer 202 to the final update
// before the runner stops asking (GitLab then finishes the job itself).
const acceptTimeout = 5 * time.Minute

// sender sends a job's spooled trace to GitLab while the job runs (every
// update interval), watches the answers for cancels, and at the end sends
// the rest and the final state until GitLab has both.
type sender struct {
	api   API
	entry *spool.Entry
	id    int64
	token string
	info  gitlab.Info
	log   *slog.Logger
	// onCancel is called (once) when GitLab says canceling; onAbort when
	// the job is no longer the runner's.
	onCancel func()
	onAbort  func(why string)
	sentHook func(n int)

	interval time.Duration
	force    time.Duration
	minRetry time.Duration
	maxRetry time.Duration

	mu         sync.Mutex
	sent       int64 // what GitLab holds
	gone       bool  // GitLab no longer takes updates for the job
	lastUpdate time.Time

	stop chan struct{}
	done chan struct{}
}

func (s *sender) setGone(why string) {
	s.mu.Lock()
	already := s.gone
	s.gone = true
	s.mu.Unlock()
	if !already {
		s.log.Warn("GitLab no longer takes updates for the job", "why", why)
		if s.onAbort != nil {
			s.onAbort(why)
		}
	}
}

func (s *sender) isGone() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gone
}

// start runs the periodic sending until finish.
func (s *sender) start(ctx context.Context) {
	s.stop = make(chan struct{})
	s.done = make(chan struct{})
	s.lastUpdate = time.Now()
	go s.loop(ctx)
}

func (s *sender) loop(ctx context.Context) {
	defer close(s.done)
	failures := 0
	t := time.NewTimer(s.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.stop:
			return
		case <-t.C:
		}
		wait := s.interval
		if err := s.tick(ctx); err != nil {
			failures++
			wait = retryWait(err, failures, s.minRetry, s.maxRetry)
			s.log.Warn("sending the trace to GitLab failed; trying again", "error", err, "in", wait)
		} else {
			failures = 0
		}
		t.Reset(wait)
	}
}

// retryWait is how long to wait after the n-th failure in a row: what
// GitLab asked for (Retry-After), else a growing backoff.
func retryWait(err error, n int, lo, hi time.Duration) time.Duration {
	var se *gitlab.StatusError
	if errors.As(err, &se) && se.RetryAfter > 0 {
		return se.RetryAfter
	}
	return gitlab.Backoff(n, lo, hi)
}

// tick sends what is new, or, when nothing was sent for a while, touches
// the job so that a silent job still learns of a cancel.
func (s *sender) tick(ctx context.Context) error {
	if s.isGone() {
		return nil
	}
	s.mu.Lock()
	sent := s.sent
	s.mu.Unlock()
	if s.entry.Size() > sent {
		return s.patch(ctx)
	}
	if time.Since(s.lastUpdate) < s.force {
		return nil
	}
	r, err := s.api.UpdateJob(ctx, s.id, s.token, gitlab.UpdateJobRequest{Info: s.info, State: gitlab.StateRunning})
	if err != nil {
		return err
	}
	s.lastUpdate = time.Now()
	s.react(r.Remote)
	return nil
}

// react acts on what an answer says about the job.
func (s *sender) react(r gitlab.Remote) {
	switch {
	case r.Abort:
		s.setGone(fmt.Sprintf("GitLab answered %d, Job-Status %q", r.Status, r.JobStatus))
	case r.NotFound:
		s.setGone("GitLab answered 404")
	case r.CancelRequested:
		if s.onCancel != nil {
			s.onCancel()
		}
	}
	if r.UpdateInterval > 0 {
		s.interval = r.UpdateInterval
	}
}

// patch sends one PATCH of what GitLab does not have yet.
func (s *sender) patch(ctx context.Context) error {
	s.mu.Lock()
	sent := s.sent
	s.mu.Unlock()
	size := s.entry.Size()
	n := min(size-sent, maxPatch)
	if n <= 0 {
		return nil
	}
	buf := make([]byte, n)
	if _, err := s.entry.ReadAt(buf, sent); err != nil {
		return fmt.Errorf("reading the spooled trace: %w", err)
	}
	r, err := s.api.PatchTrace(ctx, s.id, s.token, sent, buf)
	if err != nil {
		return err
	}
	s.lastUpdate = time.Now()
	s.react(r.Remote)
	if r.Abort || r.NotFound {
		return nil
	}
	next := r.Offset
	if next > size {
		// GitLab holds more than this runner ever wrote: send it all
		// again from the start (GitLab truncates at a rewind).
		s.log.Warn("GitLab holds more trace than the job wrote; sending the whole trace again", "gitlab", next, "spooled", size)
		next = 0
	}
	if r.Status == 416 {
		s.log.Info("GitLab's copy of the trace ends elsewhere; resending from there", "at", next, "was", sent)
	} else if s.sentHook != nil {
		s.sentHook(int(n))
	}
	s.mu.Lock()
	s.sent = next
	s.mu.Unlock()
	if err := s.entry.SetAcked(next); err != nil {
		s.log.Warn("saving the acknowledged trace offset", "error", err)
	}
	return nil
}

// flush sends everything spooled, retrying until GitLab has it all, the
// job is gone, or ctx ends.
func (s *sender) flush(ctx context.Context) error {
	failures := 0
	for range 1 << 20 {
		if s.isGone() {
			return nil
		}
		s.mu.Lock()
		sent := s.sent
		s.mu.Unlock()
		if sent >= s.entry.Size() {
			return nil
		}
		if err := s.patch(ctx); err != nil {
			if ctx.Err() != nil {
				return err
			}
			failures++
			wait := retryWait(err, failures, s.minRetry, s.maxRetry)
			s.log.Warn("sending the rest of the trace to GitLab failed; trying again", "error", err, "in", wait)
			if err := sleepCtx(ctx, wait); err != nil {
				return err
			}
			continue
		}
		failures = 0
	}
	return errors.New("the trace never reached GitLab")
}

// finish stops the periodic sending, sends the rest of the trace, then the
// final state with the trace's checksum and size, until GitLab took it
// (200), the job is no longer the runner's, or ctx ends (an error: the
// entry stays for a later resume).
func (s *sender) finish(ctx context.Context, final spool.Final) error {
	if s.stop != nil {
		close(s.stop)
		<-s.done
	}
	failures, resets := 0, 0
	var acceptedSince time.Time
	for {
		if err := s.flush(ctx); err != nil {
			return err
		}
		sum, size := s.entry.Summary()
		req := gitlab.UpdateJobRequest{Info: s.info, State: gitlab.JobState(final.State), FailureReason: final.FailureReason,
			ExitCode: final.ExitCode, Output: &gitlab.TraceSummary{Checksum: sum, Bytesize: size}}
		r, err := s.api.UpdateJob(ctx, s.id, s.token, req)
		if err != nil {
			if ctx.Err() != nil {
				return err
			}
			failures++
			wait := retryWait(err, failures, s.minRetry, s.maxRetry)
			s.log.Warn("sending the final state to GitLab failed; trying again", "error", err, "in", wait)
			if err := sleepCtx(ctx, wait); err != nil {
				return err
			}
			continue
		}
		failures = 0
		switch {
		case r.Status == 200:
			return nil
		case r.Accepted:
			if acceptedSince.IsZero() {
				acceptedSince = time.Now()
			}
			if time.Since(acceptedSince) > acceptTimeout {
				s.log.Warn("GitLab kept answering 202 to the final state; leaving the rest to GitLab")
				return nil
			}
			wait := r.UpdateInterval
			if wait <= 0 {
				wait = time.Second
			}
			if err := sleepCtx(ctx, wait); err != nil {
				return err
			}
		case r.TraceInvalid:
			resets++
			if resets > 3 {
				s.log.Error("GitLab keeps rejecting the trace's checksum; giving up on the trace")
				return nil
			}
			s.log.Warn("GitLab's copy of the trace does not match its checksum; sending it all again")
			s.mu.Lock()
			s.sent = 0
			s.mu.Unlock()
		case r.Abort || r.NotFound:
			if !s.isGone() {
				s.log.Warn("GitLab refused the final state: the job is no longer this runner's", "status", r.Status, "job_status", r.JobStatus)
			}
			return nil
		default:
			return nil
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
