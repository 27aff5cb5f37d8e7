package sdk

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/berthci/berth/sdk/proto/berth/executor/v1"
)

// server adapts an Executor to the gRPC service.
type server struct {
	pb.UnimplementedExecutorServer
	impl Executor
}

func newServer(impl Executor) *server { return &server{impl: impl} }

// toStatus turns an executor's error into a gRPC status the client turns
// back into an error with the same message.
func toStatus(err error, code codes.Code) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, ErrNotFound) {
		code = codes.NotFound
	}
	if errors.Is(err, context.Canceled) {
		code = codes.Canceled
	}
	return status.Error(code, err.Error())
}

func (s *server) Info(ctx context.Context, _ *pb.InfoRequest) (*pb.InfoResponse, error) {
	info, err := s.impl.Info(ctx)
	if err != nil {
		return nil, toStatus(err, codes.Unknown)
	}
	info.ProtocolVersion = ProtocolVersion
	return infoToProto(info), nil
}

func (s *server) Configure(ctx context.Context, req *pb.ConfigureRequest) (*pb.ConfigureResponse, error) {
	settings := map[string]any{}
	if len(req.SettingsJson) > 0 {
		dec := json.NewDecoder(bytes.NewReader(req.SettingsJson))
		dec.UseNumber()
		if err := dec.Decode(&settings); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "settings are not a JSON object: %v", err)
		}
	}
	if err := s.impl.Configure(ctx, settings); err != nil {
		return nil, toStatus(err, codes.InvalidArgument)
	}
	return &pb.ConfigureResponse{}, nil
}

func (s *server) Prepare(ctx context.Context, req *pb.PrepareRequest) (*pb.PrepareResponse, error) {
	job := jobFromProto(req.Job)
	if job.ID == "" {
		return nil, status.Error(codes.InvalidArgument, "prepare: the job has no ID")
	}
	h, err := s.impl.Prepare(ctx, job)
	if err != nil {
		return nil, toStatus(err, codes.Unknown)
	}
	if h.JobID == "" {
		h.JobID = job.ID
	}
	return &pb.PrepareResponse{Handle: handleToProto(h)}, nil
}

func (s *server) Cleanup(ctx context.Context, req *pb.CleanupRequest) (*pb.CleanupResponse, error) {
	if err := s.impl.Cleanup(ctx, handleFromProto(req.Handle)); err != nil {
		return nil, toStatus(err, codes.Unknown)
	}
	return &pb.CleanupResponse{}, nil
}

// sender serialises Sends on one stream: stdout and stderr are copied by
// different goroutines.
type sender struct {
	mu   sync.Mutex
	send func(*pb.RunEvent) error
}

func (s *sender) event(ev *pb.RunEvent) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.send(ev)
}

type outputWriter struct {
	s      *sender
	step   int32
	stream pb.OutputChunk_Stream
}

func (w outputWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		c := min(len(p), MaxChunk)
		ev := &pb.RunEvent{Event: &pb.RunEvent_Output{Output: &pb.OutputChunk{Stream: w.stream, Data: p[:c], Step: w.step}}}
		if err := w.s.event(ev); err != nil {
			return n, fmt.Errorf("sending output to the host: %w", err)
		}
		n += c
		p = p[c:]
	}
	return n, nil
}

func (s *server) Run(stream pb.Executor_RunServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	start := first.GetStart()
	if start == nil || len(start.Steps) == 0 {
		return status.Error(codes.InvalidArgument, "run: the first message must start at least one step")
	}
	h := handleFromProto(start.Handle)
	steps := make([]Step, len(start.Steps))
	for i, p := range start.Steps {
		steps[i] = stepFromProto(p)
	}
	ctx := stream.Context()
	cancels := make(chan struct{}, 16)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				return // EOF: the host sends nothing more; the stream's context covers the rest
			}
			if m.GetCancel() != nil {
				select {
				case cancels <- struct{}{}:
				default:
				}
			}
		}
	}()
	snd := &sender{send: stream.Send}
	out := func(i int) Output {
		return Output{
			Stdout: outputWriter{s: snd, step: int32(i), stream: pb.OutputChunk_STDOUT},
			Stderr: outputWriter{s: snd, step: int32(i), stream: pb.OutputChunk_STDERR},
		}
	}
	exit := func(i int, r StepResult) error {
		ev := &pb.StepExit{Step: int32(i), ExitCode: int32(r.ExitCode), Skipped: r.Skipped, Canceled: r.Canceled, TimedOut: r.TimedOut}
		if r.Err != nil {
			ev.SystemError = r.Err.Error()
		}
		return snd.event(&pb.RunEvent{Event: &pb.RunEvent_Exit{Exit: ev}})
	}
	br, ok := s.impl.(BatchRunner)
	if t, wrapped := s.impl.(interface{ batch() (BatchRunner, bool) }); wrapped {
		br, ok = t.batch()
	}
	if ok {
		return s.runBatch(ctx, br, h, steps, out, cancels, exit)
	}
	return runSequence(ctx, s.impl, h, steps, out, cancels, exit)
}

func (s *server) runBatch(ctx context.Context, br BatchRunner, h Handle, steps []Step, out StepOutput, cancels <-chan struct{}, exit func(int, StepResult) error) error {
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-cancels:
			cancel()
		case <-runCtx.Done():
		}
	}()
	// The stream carries a step's output between the exit of the step
	// before it and its own exit; a batch runner learns how its steps ended
	// only when RunSteps returns, so the output of later steps waits here.
	ord := &orderedOutput{out: out}
	results, err := br.RunSteps(runCtx, h, steps, ord.step)
	for i := range steps {
		r := StepResult{Err: err}
		switch {
		case i < len(results):
			r = results[i]
		case err == nil:
			r.Err = fmt.Errorf("the executor returned no result for step %q", steps[i].Name)
		}
		if e := ord.flush(i); e != nil {
			return e
		}
		if e := exit(i, r); e != nil {
			return e
		}
		ord.advance(i + 1)
	}
	return nil
}

// orderedOutput passes the output of the current step (the first whose
// exit is not sent) straight on, and holds the output of later steps until
// their turn.
type orderedOutput struct {
	out StepOutput

	mu      sync.Mutex
	current int
	held    map[int][]heldChunk
}

type heldChunk struct {
	stderr bool
	data   []byte
}

func (o *orderedOutput) step(i int) Output {
	return Output{Stdout: orderedWriter{o, i, false}, Stderr: orderedWriter{o, i, true}}
}

// flush writes what is held for step i, in the order it was written.
func (o *orderedOutput) flush(i int) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	chunks := o.held[i]
	delete(o.held, i)
	for _, c := range chunks {
		dst := o.out(i).Stdout
		if c.stderr {
			dst = o.out(i).Stderr
		}
		if _, err := dst.Write(c.data); err != nil {
			return err
		}
	}
	return nil
}

func (o *orderedOutput) advance(next int) {
	o.mu.Lock()
	o.current = next
	o.mu.Unlock()
}

type orderedWriter struct {
	o      *orderedOutput
	step   int
	stderr bool
}

func (w orderedWriter) Write(p []byte) (int, error) {
	o := w.o
	o.mu.Lock()
	defer o.mu.Unlock()
	if w.step > o.current {
		if o.held == nil {
			o.held = map[int][]heldChunk{}
		}
		o.held[w.step] = append(o.held[w.step], heldChunk{w.stderr, bytes.Clone(p)})
		return len(p), nil
	}
	dst := o.out(w.step).Stdout
	if w.stderr {
		dst = o.out(w.step).Stderr
	}
	return dst.Write(p)
}

// runSequence runs steps one after another with their When semantics,
// reporting each result through exit as soon as the step ends. A value on
// cancels stops the running step; later OnSuccess steps are skipped, later
// Always steps still run (and a further cancel stops them).
func runSequence(ctx context.Context, e Executor, h Handle, steps []Step, out StepOutput, cancels <-chan struct{}, exit func(int, StepResult) error) error {
	failed, canceled := false, false
	for i, step := range steps {
		var r StepResult
		switch {
		case ctx.Err() != nil:
			r = StepResult{Skipped: true, Canceled: true}
		case (failed || canceled) && step.When != Always:
			r = StepResult{Skipped: true, Canceled: canceled}
		default:
			r = runOne(ctx, e, h, step, out(i), cancels)
			canceled = canceled || r.Canceled
			failed = failed || r.Err != nil || r.ExitCode != 0 || r.TimedOut || r.Canceled
		}
		if err := exit(i, r); err != nil {
			return err
		}
	}
	return nil
}

func runOne(ctx context.Context, e Executor, h Handle, step Step, out Output, cancels <-chan struct{}) StepResult {
	stepCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	if step.Timeout > 0 {
		var c2 context.CancelFunc
		stepCtx, c2 = context.WithTimeout(stepCtx, step.Timeout)
		defer c2()
	}
	var mu sync.Mutex
	userCancel := false
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-cancels:
			mu.Lock()
			userCancel = true
			mu.Unlock()
			cancel()
		case <-done:
		}
	}()
	code, err := e.Run(stepCtx, h, step, out)
	mu.Lock()
	defer mu.Unlock()
	r := StepResult{ExitCode: code, Err: err}
	r.Canceled = userCancel || ctx.Err() != nil
	r.TimedOut = !r.Canceled && errors.Is(stepCtx.Err(), context.DeadlineExceeded)
	if (r.Canceled || r.TimedOut) && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		r.Err = nil // stopping was asked for; not a system failure
	}
	return r
}

func (s *server) Upload(stream pb.Executor_UploadServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	if first.Header == nil {
		return status.Error(codes.InvalidArgument, "upload: the first message must carry the header")
	}
	pr, pw := io.Pipe()
	go func() {
		if len(first.Data) > 0 {
			if _, err := pw.Write(first.Data); err != nil {
				return
			}
		}
		for {
			m, err := stream.Recv()
			if err == io.EOF {
				pw.Close()
				return
			}
			if err != nil {
				pw.CloseWithError(err)
				return
			}
			if _, err := pw.Write(m.Data); err != nil {
				return
			}
		}
	}()
	err = s.impl.Upload(stream.Context(), handleFromProto(first.Header.Handle), first.Header.Dir, pr)
	pr.CloseWithError(errors.New("upload already finished"))
	if err != nil {
		return toStatus(err, codes.Unknown)
	}
	return stream.SendAndClose(&pb.UploadResponse{})
}

type chunkSender struct{ stream pb.Executor_DownloadServer }

func (c chunkSender) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(len(p), MaxChunk)
		if err := c.stream.Send(&pb.DataChunk{Data: p[:k]}); err != nil {
			return n, err
		}
		n += k
		p = p[k:]
	}
	return n, nil
}

func (s *server) Download(req *pb.DownloadRequest, stream pb.Executor_DownloadServer) error {
	w := bufio.NewWriterSize(chunkSender{stream}, MaxChunk)
	if err := s.impl.Download(stream.Context(), handleFromProto(req.Handle), req.Paths, w); err != nil {
		return toStatus(err, codes.Unknown)
	}
	if err := w.Flush(); err != nil {
		return toStatus(err, codes.Unknown)
	}
	return nil
}
