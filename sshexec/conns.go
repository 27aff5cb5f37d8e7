package sshexec

import (
	"context"
	"sync"
)

// JobConns keeps one connection per job for an executor: the first call
// for a job dials, later ones reuse the connection while it is open, and
// a connection that ended (network failure, keepalives unanswered) is
// replaced by a new one on the next call. The zero value is ready to use;
// its methods are safe for concurrent use.
type JobConns struct {
	mu    sync.Mutex
	conns map[string]*jobConn
}

type jobConn struct {
	mu sync.Mutex // held while dialling
	c  *Client
}

// Get returns the open connection of job jobID, dialling cfg when there
// is none.
func (j *JobConns) Get(ctx context.Context, jobID string, cfg Config) (*Client, error) {
	j.mu.Lock()
	if j.conns == nil {
		j.conns = map[string]*jobConn{}
	}
	jc := j.conns[jobID]
	if jc == nil {
		jc = &jobConn{}
		j.conns[jobID] = jc
	}
	j.mu.Unlock()

	jc.mu.Lock()
	defer jc.mu.Unlock()
	if jc.c != nil && jc.c.Err() == nil {
		return jc.c, nil
	}
	c, err := Dial(ctx, cfg)
	if err != nil {
		return nil, err
	}
	jc.c = c
	return c, nil
}

// Close closes job jobID's connection, if it has one, and forgets it.
func (j *JobConns) Close(jobID string) {
	j.mu.Lock()
	jc := j.conns[jobID]
	delete(j.conns, jobID)
	j.mu.Unlock()
	if jc == nil {
		return
	}
	jc.mu.Lock()
	defer jc.mu.Unlock()
	if jc.c != nil {
		_ = jc.c.Close()
	}
}
