package sdk

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/berthci/berth/sdk/proto/berth/executor/v1"
)

// lyingServer is a plugin that breaks the protocol in the way its
// behaviour function says. It stands in for a buggy third-party plugin:
// no real executor misbehaves on demand, and the host must survive them.
type lyingServer struct {
	pb.UnimplementedExecutorServer
	behave func(stream pb.Executor_RunServer) error
}

func (l *lyingServer) Run(stream pb.Executor_RunServer) error {
	if _, err := stream.Recv(); err != nil {
		return err
	}
	return l.behave(stream)
}

func dialLiar(t *testing.T, behave func(pb.Executor_RunServer) error) *Client {
	t.Helper()
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	pb.RegisterExecutorServer(srv, &lyingServer{behave: behave})
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	cc, err := grpc.NewClient("unix://"+ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	c := NewClient(cc)
	c.StopSlack = 200 * time.Millisecond
	return c
}

func output(step int32, data string) *pb.RunEvent {
	return &pb.RunEvent{Event: &pb.RunEvent_Output{Output: &pb.OutputChunk{Step: step, Data: []byte(data)}}}
}

func exit(step, code int32) *pb.RunEvent {
	return &pb.RunEvent{Event: &pb.RunEvent_Exit{Exit: &pb.StepExit{Step: step, ExitCode: code}}}
}

func TestClientSurvivesLyingPlugins(t *testing.T) {
	blockUntilDone := func(s pb.Executor_RunServer) error { <-s.Context().Done(); return nil }
	tests := []struct {
		name    string
		behave  func(pb.Executor_RunServer) error
		steps   []Step
		cancel  bool
		wantErr []string // per step, "" = no error
		wantOut string
	}{
		{
			name:    "ends without an exit event",
			behave:  func(s pb.Executor_RunServer) error { return s.Send(output(0, "partial")) },
			steps:   []Step{{Name: "script"}},
			wantErr: []string{`without saying how step "script" ended`},
			wantOut: "partial",
		},
		{
			name:    "reports the end of the wrong step",
			behave:  func(s pb.Executor_RunServer) error { return s.Send(exit(3, 0)) },
			steps:   []Step{{Name: "script"}},
			wantErr: []string{"end of step 3 while step 0 runs"},
		},
		{
			name: "sends output for a later step",
			behave: func(s pb.Executor_RunServer) error {
				s.Send(output(1, "early"))
				return blockUntilDone(s)
			},
			steps:   []Step{{Name: "a"}, {Name: "b"}},
			wantErr: []string{"output for step 1 while step 0 runs", "output for step 1 while step 0 runs"},
		},
		{
			name:    "sends an empty event",
			behave:  func(s pb.Executor_RunServer) error { s.Send(&pb.RunEvent{}); return blockUntilDone(s) },
			steps:   []Step{{Name: "script"}},
			wantErr: []string{"does not know"},
		},
		{
			name:    "ignores its step timeout",
			behave:  blockUntilDone,
			steps:   []Step{{Name: "script", Timeout: 100 * time.Millisecond}},
			wantErr: []string{`did not end step "script"`},
		},
		{
			name:    "ignores a cancel",
			behave:  blockUntilDone,
			steps:   []Step{{Name: "script", GracePeriod: 100 * time.Millisecond}},
			cancel:  true,
			wantErr: []string{`did not end step "script"`},
		},
		{
			name: "tells the truth",
			behave: func(s pb.Executor_RunServer) error {
				s.Send(output(0, "ok"))
				s.Send(exit(0, 0))
				s.Send(output(1, "ok2"))
				return s.Send(exit(1, 4))
			},
			steps:   []Step{{Name: "a"}, {Name: "b"}},
			wantErr: []string{"", ""},
			wantOut: "okok2",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialLiar(t, tt.behave)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tt.cancel {
				time.AfterFunc(50*time.Millisecond, cancel)
			}
			var out bytes.Buffer
			res, err := c.RunSteps(ctx, Handle{JobID: "j"}, tt.steps, func(int) Output { return Output{Stdout: &out, Stderr: &out} })
			if err != nil {
				t.Fatalf("RunSteps: %v", err)
			}
			if len(res) != len(tt.steps) {
				t.Fatalf("%d results for %d steps", len(res), len(tt.steps))
			}
			for i, want := range tt.wantErr {
				got := res[i].Err
				switch {
				case want == "" && got != nil:
					t.Errorf("step %d: unexpected error %v", i, got)
				case want != "" && (got == nil || !strings.Contains(got.Error(), want)):
					t.Errorf("step %d: error %v, want one saying %q", i, got, want)
				}
			}
			if out.String() != tt.wantOut {
				t.Errorf("output %q, want %q", out.String(), tt.wantOut)
			}
		})
	}
}
