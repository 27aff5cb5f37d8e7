// Package gitlab is a client for GitLab's runner API v4: registration,
// job requests, job state updates, incremental traces and artifacts, spoken
// the way gitlab-runner speaks them (see
// shared/reference/gitlab-runner-api.md).
package gitlab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// ErrForbidden is wrapped by the errors of calls GitLab answered 403.
var ErrForbidden = errors.New("forbidden")

// StatusError is an answer of GitLab the call could not use.
type StatusError struct {
	// Endpoint names the call: "POST /api/v4/jobs/request".
	Endpoint string
	Status   int
	// Message is GitLab's "message" (or the start of the body).
	Message string
	// RetryAfter is what GitLab asked to wait (Retry-After or
	// RateLimit-ResetTime), zero when it did not say.
	RetryAfter time.Duration
}

func (e *StatusError) Error() string {
	msg := fmt.Sprintf("GitLab answered %d %s to %s", e.Status, http.StatusText(e.Status), e.Endpoint)
	if e.Message != "" {
		msg += ": " + e.Message
	}
	return msg
}

// Is makes a 403 match ErrForbidden.
func (e *StatusError) Is(target error) bool {
	return target == ErrForbidden && e.Status == http.StatusForbidden
}

// Temporary says whether sending the call again may succeed: the statuses
// gitlab-runner retries (408, 429, 500, 502, 503, 504, ≥ 512).
func (e *StatusError) Temporary() bool { return retryable(e.Status) }

func retryable(status int) bool {
	switch status {
	case http.StatusRequestTimeout, http.StatusTooManyRequests, http.StatusInternalServerError,
		http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return status >= 512
}

// Options configure a Client.
type Options struct {
	// HTTPClient is used for every call; nil means a client of our own
	// (redirects drop the token headers when they leave GitLab's host).
	HTTPClient *http.Client
	// UserAgent for every call.
	UserAgent string
	Log       *slog.Logger
	// Observe, when set, is told of every answer (status 0 for a call that
	// got none), by endpoint ("jobs/request", "jobs/:id/trace", …).
	Observe func(endpoint string, status int)
	// Attempts is how often a call that may be retried is sent at most
	// (5 when zero, as gitlab-runner).
	Attempts int
	// MinBackoff and MaxBackoff bound the wait between attempts
	// (1 s and 30 s when zero); Retry-After is honoured above MaxBackoff.
	MinBackoff, MaxBackoff time.Duration
	// RequestTimeout bounds one ordinary call (1 min when zero); a job
	// request is allowed longer (GitLab may hold it: long polling).
	RequestTimeout time.Duration
	// Sleep waits between attempts (nil: a timer that ctx can cut short);
	// tests record the waits through it instead of timing them.
	Sleep func(ctx context.Context, d time.Duration) error
	// LongPollTimeout bounds one job request (2 min when zero).
	LongPollTimeout time.Duration
}

// Client talks to one GitLab instance. It is safe for concurrent use.
type Client struct {
	base    string // https://gitlab.example.com
	api     string // base + "/api/v4/"
	http    *http.Client
	ua      string
	log     *slog.Logger
	observe func(string, int)
	opts    Options
}

// tokenHeaders are dropped when a redirect leaves GitLab's host.
var tokenHeaders = []string{"Job-Token", "Runner-Token", "Private-Token", "Authorization"}

// NewClient returns a client for the GitLab at rawURL (a trailing "/" and a
// legacy "/ci" are dropped, as gitlab-runner does).
func NewClient(rawURL string, opts Options) (*Client, error) {
	base, err := CleanURL(rawURL)
	if err != nil {
		return nil, err
	}
	if opts.Attempts <= 0 {
		opts.Attempts = 5
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = time.Second
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 30 * time.Second
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = time.Minute
	}
	if opts.LongPollTimeout <= 0 {
		opts.LongPollTimeout = 2 * time.Minute
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.UserAgent == "" {
		opts.UserAgent = "berth"
	}
	hc := opts.HTTPClient
	if hc == nil {
		tr := &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout:   10 * time.Second,
			MaxIdleConnsPerHost:   16,
			IdleConnTimeout:       90 * time.Second,
			ExpectContinueTimeout: time.Second,
		}
		hc = &http.Client{Transport: tr, CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 10 {
				return errors.New("stopped after 10 redirects")
			}
			if req.URL.Host != via[0].URL.Host {
				for _, h := range tokenHeaders {
					req.Header.Del(h)
				}
			}
			return nil
		}}
	}
	return &Client{base: base, api: base + "/api/v4/", http: hc, ua: opts.UserAgent, log: opts.Log, observe: opts.Observe, opts: opts}, nil
}

// CleanURL checks a GitLab URL and returns it without a trailing "/" or a
// legacy "/ci", and without credentials.
func CleanURL(rawURL string) (string, error) {
	u, err := url.Parse(strings.TrimSpace(rawURL))
	if err != nil {
		return "", fmt.Errorf("GitLab URL %q: %w", rawURL, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return "", fmt.Errorf("GitLab URL %q: want http(s)://host[/path]", rawURL)
	}
	u.User = nil
	u.RawQuery, u.Fragment = "", ""
	s := strings.TrimRight(u.String(), "/")
	s = strings.TrimSuffix(s, "/ci")
	return strings.TrimRight(s, "/"), nil
}

// URL is the GitLab URL the client talks to.
func (c *Client) URL() string { return c.base }

// call is one API call.
type call struct {
	method   string
	path     string // below /api/v4/
	endpoint string // for metrics: jobs/:id
	// body makes the request body again for each attempt.
	body        func() (io.Reader, error)
	contentType string
	header      http.Header
	// attempts: 1 for calls whose caller decides about retries.
	attempts int
	timeout  time.Duration
}

func (cl call) name() string {
	p := strings.SplitN(cl.path, "?", 2)[0]
	if strings.HasPrefix(p, "http://") || strings.HasPrefix(p, "https://") {
		return cl.method + " " + p
	}
	return cl.method + " /api/v4/" + p
}

// jsonBody returns a body maker for v.
func jsonBody(v any) (func() (io.Reader, error), error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return func() (io.Reader, error) { return bytes.NewReader(b), nil }, nil
}

// do sends the call, retrying temporary failures (statuses and transport
// errors) with backoff, and returns the last answer. The caller closes
// its body; ctx bounds everything. cancel is called when the caller is done
// with the body.
func (c *Client) do(ctx context.Context, cl call) (*http.Response, context.CancelFunc, error) {
	attempts := cl.attempts
	if attempts <= 0 {
		attempts = c.opts.Attempts
	}
	timeout := cl.timeout
	if timeout == 0 {
		timeout = c.opts.RequestTimeout
	}
	var lastErr error
	for attempt := 1; ; attempt++ {
		resp, cancel, err := c.once(ctx, cl, timeout)
		if err == nil && (!retryable(resp.StatusCode) || attempt >= attempts) {
			return resp, cancel, nil
		}
		wait := c.backoff(attempt)
		if err != nil {
			if ctx.Err() != nil || attempt >= attempts {
				return nil, nil, err
			}
			lastErr = err
		} else {
			se := statusError(cl, resp)
			resp.Body.Close()
			cancel()
			lastErr = se
			if se.RetryAfter > 0 {
				wait = se.RetryAfter
			}
		}
		c.log.Debug("retrying a call to GitLab", "call", cl.name(), "attempt", attempt, "wait", wait, "error", lastErr)
		pause := c.opts.Sleep
		if pause == nil {
			pause = sleep
		}
		if err := pause(ctx, wait); err != nil {
			return nil, nil, fmt.Errorf("%w (gave up waiting to retry: %w)", lastErr, err)
		}
	}
}

// backoff is the wait after the given failed attempt: doubling from
// MinBackoff, with jitter, capped at MaxBackoff.
func (c *Client) backoff(attempt int) time.Duration {
	return Backoff(attempt, c.opts.MinBackoff, c.opts.MaxBackoff)
}

// Backoff is the wait after the n-th failure (1-based): min doubled n-1
// times, up to max, with up to 25 % jitter taken off.
func Backoff(n int, lo, hi time.Duration) time.Duration {
	d := lo
	for i := 1; i < n && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	return d - time.Duration(mrand.Int64N(int64(d)/4+1))
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *Client) once(ctx context.Context, cl call, timeout time.Duration) (*http.Response, context.CancelFunc, error) {
	rctx, cancel := context.WithTimeout(ctx, timeout)
	var body io.Reader
	if cl.body != nil {
		b, err := cl.body()
		if err != nil {
			cancel()
			return nil, nil, fmt.Errorf("%s: making the request body: %w", cl.name(), err)
		}
		body = b
	}
	target := cl.path
	if !strings.HasPrefix(target, "http://") && !strings.HasPrefix(target, "https://") {
		target = c.api + cl.path
	}
	req, err := http.NewRequestWithContext(rctx, cl.method, target, body)
	if err != nil {
		cancel()
		return nil, nil, fmt.Errorf("%s: %w", cl.name(), err)
	}
	for k, v := range cl.header {
		req.Header[k] = v
	}
	if cl.contentType != "" {
		req.Header.Set("Content-Type", cl.contentType)
	}
	req.Header.Set("User-Agent", c.ua)
	req.Header.Set("X-Request-Id", requestID())
	resp, err := c.http.Do(req)
	if err != nil {
		cancel()
		c.observed(cl.endpoint, 0)
		// The URL in err has no credentials: the base URL never has any.
		return nil, nil, fmt.Errorf("%s: %w", cl.name(), unwrapURLError(err))
	}
	c.observed(cl.endpoint, resp.StatusCode)
	return resp, cancel, nil
}

// unwrapURLError drops url.Error's "Post \"URL\":" prefix: the call's
// name already says it.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func (c *Client) observed(endpoint string, status int) {
	if c.observe != nil {
		c.observe(endpoint, status)
	}
}

func requestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// statusError reads the answer's message (a bounded part of the body).
func statusError(cl call, resp *http.Response) *StatusError {
	se := &StatusError{Endpoint: cl.name(), Status: resp.StatusCode, RetryAfter: retryAfter(resp.Header, time.Now())}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	var m struct {
		Message any `json:"message"`
		Error   any `json:"error"`
	}
	if json.Unmarshal(data, &m) == nil && (m.Message != nil || m.Error != nil) {
		if m.Message != nil {
			se.Message = fmt.Sprint(m.Message)
		} else {
			se.Message = fmt.Sprint(m.Error)
		}
	} else {
		se.Message = snippet(data)
	}
	return se
}

// snippet is the start of a body, on one line, for an error message.
func snippet(data []byte) string {
	s := strings.Join(strings.Fields(string(data)), " ")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// retryAfter reads Retry-After (seconds or a date) or RateLimit-ResetTime
// (a date).
func retryAfter(h http.Header, now time.Time) time.Duration {
	if v := strings.TrimSpace(h.Get("Retry-After")); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n >= 0 {
			return time.Duration(n) * time.Second
		}
		if t, err := http.ParseTime(v); err == nil {
			return max(t.Sub(now), 0)
		}
	}
	if v := strings.TrimSpace(h.Get("RateLimit-ResetTime")); v != "" {
		if t, err := http.ParseTime(v); err == nil {
			return max(t.Sub(now), 0)
		}
	}
	return 0
}

// readJSON decodes a 2xx answer that must be JSON.
func readJSON(cl call, resp *http.Response, limit int64, v any) ([]byte, error) {
	ct := resp.Header.Get("Content-Type")
	mt, _, _ := mime.ParseMediaType(ct)
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%s: reading GitLab's answer: %w", cl.name(), err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s: GitLab's answer is larger than %d bytes", cl.name(), limit)
	}
	if mt != "application/json" {
		return data, fmt.Errorf("%s: GitLab answered %d with Content-Type %q instead of JSON: %q", cl.name(), resp.StatusCode, ct, snippet(data))
	}
	if v != nil {
		if err := json.Unmarshal(data, v); err != nil {
			return data, fmt.Errorf("%s: GitLab's answer (%d) is not the JSON expected: %w", cl.name(), resp.StatusCode, describeJSONError(err))
		}
	}
	return data, nil
}

func runnerHeader(token string) http.Header { return http.Header{"Runner-Token": {token}} }
func jobHeader(token string) http.Header    { return http.Header{"Job-Token": {token}} }
