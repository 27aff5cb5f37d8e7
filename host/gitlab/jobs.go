package gitlab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// MaxJobPayload bounds the 201 body of a job request.
const MaxJobPayload = 64 << 20

// JobRequestResult is the answer to a job request.
type JobRequestResult struct {
	// Job is nil when GitLab had none (204, 409).
	Job *JobResponse
	// Body is the raw payload of the job.
	Body []byte
	// LastUpdate is the X-GitLab-Last-Update GitLab sent, to send back as
	// last_update next time ("" when it sent none).
	LastUpdate string
	// Status is GitLab's answer: 201, 204 or 409.
	Status int
}

// RequestJob asks GitLab for a job (POST /jobs/request). No job is not an
// error. A 403 (the runner's token is no longer valid) wraps ErrForbidden.
// A 201 whose body cannot be used returns a *DecodeError, with the job's ID
// and token when they could be read.
func (c *Client) RequestJob(ctx context.Context, req JobRequest) (JobRequestResult, error) {
	body, err := jsonBody(req)
	if err != nil {
		return JobRequestResult{}, err
	}
	cl := call{method: http.MethodPost, path: "jobs/request", endpoint: "jobs/request", body: body, contentType: "application/json",
		header: http.Header{"Accept": {"application/json"}, "Runner-Token": {req.Token}}, timeout: c.opts.LongPollTimeout}
	resp, cancel, err := c.do(ctx, cl)
	if err != nil {
		return JobRequestResult{}, err
	}
	defer cancel()
	defer resp.Body.Close()
	res := JobRequestResult{Status: resp.StatusCode, LastUpdate: resp.Header.Get("X-GitLab-Last-Update")}
	switch resp.StatusCode {
	case http.StatusCreated:
		data, err := readJSON(cl, resp, MaxJobPayload, nil)
		res.Body = data
		if err != nil {
			// Not JSON at all: try for the id and token anyway.
			if j, derr := DecodeJob(data); derr == nil {
				return res, &DecodeError{ID: j.ID, Token: j.Token, Err: err}
			}
			return res, &DecodeError{Err: err}
		}
		j, err := DecodeJob(data)
		if err != nil {
			var de *DecodeError
			if errors.As(err, &de) {
				de.Err = fmt.Errorf("%s answered 201 with a body berth cannot use: %w", cl.name(), de.Err)
			}
			return res, err
		}
		res.Job = j
		return res, nil
	case http.StatusNoContent, http.StatusConflict:
		return res, nil
	default:
		return res, statusError(cl, resp)
	}
}

// Remote is what GitLab's answer to a job update or trace patch says about
// the job.
type Remote struct {
	// Status is the HTTP status of the answer.
	Status int
	// JobStatus is the Job-Status header: running, canceling, canceled…
	JobStatus string
	// UpdateInterval is X-GitLab-Trace-Update-Interval (zero when absent).
	UpdateInterval time.Duration
	// CancelRequested: the user canceled the job (Job-Status: canceling);
	// stop the script gracefully, run after_script, report job_canceled.
	CancelRequested bool
	// Abort: the job is no longer the runner's (403, or Job-Status
	// canceled/failed); kill it at once.
	Abort bool
	// NotFound: GitLab does not know the job (404).
	NotFound bool
}

func remote(resp *http.Response) Remote {
	r := Remote{Status: resp.StatusCode, JobStatus: resp.Header.Get("Job-Status")}
	if v := strings.TrimSpace(resp.Header.Get("X-GitLab-Trace-Update-Interval")); v != "" {
		if f, err := strconv.ParseFloat(v, 64); err == nil && f > 0 {
			r.UpdateInterval = min(time.Duration(f*float64(time.Second)), 15*time.Minute)
		}
	}
	switch {
	case resp.StatusCode == http.StatusForbidden || r.JobStatus == "canceled" || r.JobStatus == "failed":
		r.Abort = true
	case r.JobStatus == "canceling":
		r.CancelRequested = true
	case resp.StatusCode == http.StatusNotFound:
		r.NotFound = true
	}
	return r
}

// UpdateResult is the answer to a job update.
type UpdateResult struct {
	Remote
	// Accepted: GitLab has not stored the whole trace yet (202); send the
	// update again after UpdateInterval.
	Accepted bool
	// TraceInvalid: the checksum did not match what GitLab holds (412);
	// send the whole trace again, then the update.
	TraceInvalid bool
}

// UpdateJob sends a job's state (PUT /jobs/:id), once: the caller decides
// about retries. The answers the protocol defines (200, 202, 403, 404, 412
// and any Job-Status) are results; anything else is a *StatusError.
func (c *Client) UpdateJob(ctx context.Context, id int64, token string, req UpdateJobRequest) (UpdateResult, error) {
	req.Token = token
	if req.Output != nil && req.Checksum == "" {
		req.Checksum = req.Output.Checksum
	}
	body, err := jsonBody(req)
	if err != nil {
		return UpdateResult{}, err
	}
	cl := call{method: http.MethodPut, path: "jobs/" + strconv.FormatInt(id, 10), endpoint: "jobs/:id", body: body,
		contentType: "application/json", header: jobHeader(token), attempts: 1}
	resp, cancel, err := c.do(ctx, cl)
	if err != nil {
		return UpdateResult{}, err
	}
	defer cancel()
	defer resp.Body.Close()
	r := UpdateResult{Remote: remote(resp)}
	switch resp.StatusCode {
	case http.StatusOK, http.StatusForbidden, http.StatusNotFound:
		return r, nil
	case http.StatusAccepted:
		r.Accepted = true
		return r, nil
	case http.StatusPreconditionFailed:
		r.TraceInvalid = true
		return r, nil
	}
	if r.Abort || r.CancelRequested {
		return r, nil
	}
	return r, statusError(cl, resp)
}

// PatchResult is the answer to a trace patch.
type PatchResult struct {
	Remote
	// Offset is how many bytes of the trace GitLab holds now: where the
	// next patch starts (after a 416, where GitLab really is).
	Offset int64
}

// PatchTrace sends data as the part of the trace starting at offset
// (PATCH /jobs/:id/trace), once. A 416 is a result, not an error: Offset
// then says where GitLab's copy ends.
func (c *Client) PatchTrace(ctx context.Context, id int64, token string, offset int64, data []byte) (PatchResult, error) {
	if len(data) == 0 {
		return PatchResult{Offset: offset}, errors.New("an empty trace patch is never sent")
	}
	hdr := jobHeader(token)
	hdr.Set("Content-Range", fmt.Sprintf("%d-%d", offset, offset+int64(len(data))-1))
	cl := call{method: http.MethodPatch, path: "jobs/" + strconv.FormatInt(id, 10) + "/trace?debug_trace=false", endpoint: "jobs/:id/trace",
		body: func() (io.Reader, error) { return bytes.NewReader(data), nil }, contentType: "text/plain", header: hdr, attempts: 1}
	resp, cancel, err := c.do(ctx, cl)
	if err != nil {
		return PatchResult{Offset: offset}, err
	}
	defer cancel()
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	r := PatchResult{Remote: remote(resp), Offset: offset}
	switch {
	case r.Abort, r.NotFound:
		return r, nil
	case resp.StatusCode == http.StatusAccepted || resp.StatusCode == http.StatusOK:
		r.Offset = offset + int64(len(data))
		return r, nil
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable:
		end, ok := rangeEnd(resp.Header.Get("Range"))
		if !ok {
			return r, fmt.Errorf("%s: GitLab answered 416 without a valid Range header (got %q)", cl.name(), resp.Header.Get("Range"))
		}
		r.Offset = end
		return r, nil
	default:
		return r, statusError(cl, resp)
	}
}

// rangeEnd reads the N of a "0-N" Range header.
func rangeEnd(v string) (int64, bool) {
	v = strings.TrimPrefix(strings.TrimSpace(v), "bytes=")
	_, end, ok := strings.Cut(v, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(strings.TrimSpace(end), 10, 64)
	return n, err == nil && n >= 0
}

// Checksum is the trace checksum GitLab compares: "crc32:" and the IEEE
// CRC-32 of the whole trace in 8 hex digits.
func Checksum(crc uint32) string { return fmt.Sprintf("crc32:%08x", crc) }

// ChecksumOf is Checksum of data's CRC-32.
func ChecksumOf(data []byte) string { return Checksum(crc32.ChecksumIEEE(data)) }
