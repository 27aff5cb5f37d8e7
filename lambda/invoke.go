package lambda

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awslambda "github.com/aws/aws-sdk-go-v2/service/lambda"
	"github.com/aws/aws-sdk-go-v2/service/lambda/types"

	"github.com/berthci/berth/lambda/protocol"
	"github.com/berthci/berth/sdk"
)

// invokeSlack is how long past the function's timeout the executor waits
// for an invocation to answer (cold start, network).
const invokeSlack = time.Minute

// Run implements sdk.Executor: a single step is a job of one step.
func (e *Executor) Run(ctx context.Context, h sdk.Handle, step sdk.Step, out sdk.Output) (int, error) {
	res, err := e.RunSteps(ctx, h, []sdk.Step{step}, func(int) sdk.Output { return out })
	if err != nil {
		return -1, err
	}
	r := res[0]
	switch {
	case r.Err != nil:
		return -1, r.Err
	case r.Canceled:
		return -1, fmt.Errorf("step %q of job %q: %w", step.Name, h.JobID, context.Canceled)
	case r.TimedOut:
		return r.ExitCode, fmt.Errorf("step %q of job %q: %w", step.Name, h.JobID, context.DeadlineExceeded)
	}
	return r.ExitCode, nil
}

// RunSteps implements sdk.BatchRunner: one invocation runs every step.
// Each step's output is written once the invocation has answered. When
// ctx ends first the executor stops waiting and reports the job
// cancelled; the invocation itself runs on in Lambda.
func (e *Executor) RunSteps(ctx context.Context, h sdk.Handle, steps []sdk.Step, out sdk.StepOutput) ([]sdk.StepResult, error) {
	j, err := e.job(h)
	if err != nil {
		return nil, err
	}
	p := j.p
	payload, err := j.request(steps)
	if err != nil {
		return nil, err
	}
	if len(payload) >= protocol.RequestLimit {
		return nil, fmt.Errorf("lambda executor: the request for job %q is %s, and a synchronous Lambda invoke takes less than %s (uploaded files: %s compressed, before base64): upload fewer files",
			h.JobID, mib(len(payload)), mib(protocol.RequestLimit), mib(j.uploadSize()))
	}
	in := &awslambda.InvokeInput{FunctionName: aws.String(p.s.FunctionName), Payload: payload}
	if p.s.Qualifier != "" {
		in.Qualifier = aws.String(p.s.Qualifier)
	}

	if p.slots != nil {
		select {
		case p.slots <- struct{}{}:
		case <-ctx.Done():
			return canceled(steps, out, "[berth] job canceled before its Lambda invocation started\n"), nil
		case <-j.gone:
			return nil, fmt.Errorf("lambda executor: job %q was cleaned up before its Lambda invocation started", h.JobID)
		}
	}
	type answer struct {
		o   *awslambda.InvokeOutput
		err error
	}
	done := make(chan answer, 1)
	start := time.Now()
	go func() {
		if p.slots != nil {
			defer func() { <-p.slots }()
		}
		// The call outlives a cancel: the invocation goes on in Lambda, and
		// holds its slot, until it answers.
		ictx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.s.Timeout+invokeSlack)
		defer cancel()
		o, err := p.client.Invoke(ictx, in)
		done <- answer{o, err}
	}()

	var a answer
	select {
	case a = <-done:
	case <-ctx.Done():
		e.logger().Info("job canceled; its Lambda invocation runs on", "job", h.JobID, "function", p.s.FunctionName)
		return canceled(steps, out, fmt.Sprintf("[berth] job canceled: a Lambda invocation cannot be stopped, so this one runs on in the function until its steps end or the function stops them before its timeout (%s); its output is dropped\n", p.s.Timeout)), nil
	case <-j.gone:
		return nil, fmt.Errorf("lambda executor: job %q was cleaned up while its Lambda invocation ran; the invocation runs on until its steps end or the function's timeout (%s)", h.JobID, p.s.Timeout)
	}
	resp, err := p.answer(a.o, a.err, time.Since(start))
	if err != nil {
		return nil, fmt.Errorf("lambda executor: job %q: %w", h.JobID, err)
	}
	if len(resp.Steps) != len(steps) {
		return nil, fmt.Errorf("lambda executor: job %q: the %s answered with %d step results for %d steps", h.JobID, p.describe(), len(resp.Steps), len(steps))
	}
	j.mu.Lock()
	j.ran, j.files, j.filesErr = true, resp.FilesTarGz, resp.FilesError
	j.mu.Unlock()
	if resp.DroppedBytes > 0 {
		e.logger().Warn("the job's output did not fit in the Lambda response and was cut", "job", h.JobID, "dropped_bytes", resp.DroppedBytes)
	}
	results := make([]sdk.StepResult, len(steps))
	for i, r := range resp.Steps {
		o := out(i)
		if _, err := o.Stdout.Write(r.Stdout); err != nil {
			return nil, fmt.Errorf("lambda executor: writing the output of step %q: %w", steps[i].Name, err)
		}
		if _, err := o.Stderr.Write(r.Stderr); err != nil {
			return nil, fmt.Errorf("lambda executor: writing the output of step %q: %w", steps[i].Name, err)
		}
		results[i] = sdk.StepResult{ExitCode: r.ExitCode, Skipped: r.Skipped, TimedOut: r.TimedOut}
		if r.Error != "" {
			results[i].Err = fmt.Errorf("in the %s: %s", p.describe(), r.Error)
		}
	}
	return results, nil
}

// request builds the invocation's payload.
func (j *job) request(steps []sdk.Step) ([]byte, error) {
	s := j.p.s
	req := protocol.Request{
		Version:          protocol.Version,
		JobID:            j.id,
		BuildDir:         s.BuildDir,
		DownloadPaths:    j.downloadPaths,
		ReserveMS:        s.reserve().Milliseconds(),
		MaxResponseBytes: protocol.ResponseLimit - 100,
	}
	if len(s.Environment) > 0 {
		req.Env = map[string]string{}
		for _, kv := range s.Environment {
			k, v, _ := strings.Cut(kv, "=")
			req.Env[k] = v
		}
	}
	for _, st := range steps {
		when := protocol.OnSuccess
		if st.When == sdk.Always {
			when = protocol.Always
		}
		req.Steps = append(req.Steps, protocol.Step{
			Name: st.Name, Script: st.Script, Shell: st.Shell, When: when,
			TimeoutMS: st.Timeout.Milliseconds(), GraceMS: st.GracePeriod.Milliseconds(),
		})
	}
	j.mu.Lock()
	req.Uploads = append(req.Uploads, j.uploads...)
	j.mu.Unlock()
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("lambda executor: encoding the request of job %q: %w", j.id, err)
	}
	return b, nil
}

func (j *job) uploadSize() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.uploadBytes
}

// canceled is the result of a job whose invocation was abandoned: the
// first step cancelled, the others skipped. note goes to the first step's
// stderr.
func canceled(steps []sdk.Step, out sdk.StepOutput, note string) []sdk.StepResult {
	_, _ = out(0).Stderr.Write([]byte(note))
	res := make([]sdk.StepResult, len(steps))
	for i := range res {
		res[i] = sdk.StepResult{ExitCode: -1, Canceled: true, Skipped: i > 0}
	}
	return res
}

// answer turns what Invoke returned into the function's response, or an
// error that says what went wrong in words for the job's log: the SDK's
// error, or the function's error (which Lambda reports with status 200,
// and not always with the X-Amz-Function-Error header).
func (p *profile) answer(o *awslambda.InvokeOutput, err error, took time.Duration) (*protocol.Response, error) {
	fn := p.describe()
	if err != nil {
		var notFound *types.ResourceNotFoundException
		switch {
		case errors.As(err, &notFound):
			return nil, fmt.Errorf("the %s does not exist: create it (docs/lambda.md) or fix function_name: %w", fn, err)
		case errors.Is(err, context.DeadlineExceeded):
			return nil, fmt.Errorf("the %s did not answer within %s (its timeout, setting timeout, plus %s): %w", fn, took.Round(time.Second), invokeSlack, err)
		}
		return nil, fmt.Errorf("invoking the %s: %w", fn, err)
	}
	return decodeResponse(fn, o.StatusCode, o.FunctionError, o.Payload)
}

// decodeResponse reads the body of an invocation that Lambda answered.
func decodeResponse(fn string, status int32, functionError *string, body []byte) (*protocol.Response, error) {
	if status != 200 {
		return nil, fmt.Errorf("the %s answered with status %d: %s", fn, status, excerpt(body))
	}
	var fields map[string]json.RawMessage
	isObject := json.Unmarshal(body, &fields) == nil
	_, hasVersion := fields["version"]
	if functionError != nil || (isObject && !hasVersion && (fields["errorMessage"] != nil || fields["errorType"] != nil)) {
		return nil, functionFailure(fn, functionError, body)
	}
	if !isObject || !hasVersion {
		return nil, functionFailure(fn, nil, body)
	}
	var resp protocol.Response
	if err := json.Unmarshal(body, &resp); err != nil {
		return nil, fmt.Errorf("the %s answered with a response berth cannot read: %w", fn, err)
	}
	if resp.Version != protocol.Version {
		return nil, fmt.Errorf("the %s answered in protocol version %d, this berth speaks %d: deploy the function built by this berth (berth lambda package)", fn, resp.Version, protocol.Version)
	}
	return &resp, nil
}

// functionFailure words a failed invocation: Lambda's error object
// ({"errorMessage", "errorType"}), or a body that is not the berth
// function's JSON (Lambda's "Task timed out after …").
func functionFailure(fn string, functionError *string, body []byte) error {
	var lerr struct {
		Message string `json:"errorMessage"`
		Type    string `json:"errorType"`
	}
	msg := excerpt(body)
	if json.Unmarshal(body, &lerr) == nil && (lerr.Message != "" || lerr.Type != "") {
		msg = lerr.Message
		if lerr.Type != "" {
			if msg != "" {
				msg += " "
			}
			msg += "(" + lerr.Type + ")"
		}
	}
	kind := "failed"
	if functionError != nil && *functionError != "" {
		kind = "failed (" + *functionError + ")"
	}
	err := fmt.Errorf("the %s %s: %s", fn, kind, msg)
	lower := strings.ToLower(msg)
	if strings.Contains(lower, "timed out") || strings.Contains(lower, "timedout") {
		err = fmt.Errorf("%w; Lambda stopped it at its timeout: is the function's timeout shorter than the executor's setting timeout?", err)
	}
	return err
}

// excerpt is the start of a body, for a message.
func excerpt(body []byte) string {
	b := bytes.TrimSpace(body)
	if len(b) == 0 {
		return "(empty body)"
	}
	if len(b) > 500 {
		return fmt.Sprintf("%q… (%d bytes)", b[:500], len(b))
	}
	return fmt.Sprintf("%q", b)
}
