//go:build linux

package lambda

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awslambda "github.com/aws/aws-sdk-go-v2/service/lambda"
	"github.com/hashicorp/go-plugin"

	"github.com/berthci/berth/sdk"
)

// BenchmarkInvoke measures the overhead of the executor on a trivial job
// (one step, `true`) against a bare SDK Invoke of the same function with the
// same request, all against one emulator in the same run:
//
//	go test ./lambda -run '^$' -bench Invoke -benchtime 300x
//
// sdk_invoke is Invoke alone; executor is Prepare + RunSteps + Cleanup
// called in-process; plugin is the same through the gRPC client the host
// uses (go-plugin's in-process connection). One op is one round of all
// three; each reports its median and 90th percentile.
func BenchmarkInvoke(b *testing.B) {
	em := startEmulator(b, 60, b.TempDir())
	e := New(testCredentials())
	if err := e.Configure(b.Context(), settingsFor(em, "60s")); err != nil {
		b.Fatal(err)
	}
	step := sdk.Step{Name: "script", Shell: "sh", Script: "true"}
	payload, err := (&job{id: "bench-0", p: e.prof}).request([]sdk.Step{step})
	if err != nil {
		b.Fatal(err)
	}
	client := sdkClient(b, em)
	out := func(int) sdk.Output { return sdk.Output{Stdout: io.Discard, Stderr: io.Discard} }

	runJob := func(ex interface {
		sdk.Executor
		sdk.BatchRunner
	}, id string) error {
		ctx := context.Background()
		h, err := ex.Prepare(ctx, sdk.Job{ID: id, Shell: "sh"})
		if err != nil {
			return err
		}
		defer ex.Cleanup(ctx, h)
		res, err := ex.RunSteps(ctx, h, []sdk.Step{step}, out)
		if err != nil {
			return err
		}
		if r := res[0]; r.ExitCode != 0 || r.Err != nil {
			return fmt.Errorf("the job ended with %+v", r)
		}
		return nil
	}
	pc, _ := plugin.TestPluginGRPCConn(b, false, map[string]plugin.Plugin{sdk.PluginName: &sdk.GRPCPlugin{Impl: e}})
	b.Cleanup(func() { pc.Close() })
	raw, err := pc.Dispense(sdk.PluginName)
	if err != nil {
		b.Fatal(err)
	}
	host := raw.(*sdk.Client)

	cases := []struct {
		name string
		op   func(i int) error
	}{
		{"sdk_invoke", func(int) error {
			o, err := client.Invoke(context.Background(), &awslambda.InvokeInput{FunctionName: aws.String("function"), Payload: payload})
			if err != nil {
				return err
			}
			if o.StatusCode != 200 || !bytes.Contains(o.Payload, []byte(`"version":1`)) {
				return fmt.Errorf("status %d, body %s", o.StatusCode, o.Payload)
			}
			return nil
		}},
		{"executor", func(i int) error { return runJob(e, fmt.Sprintf("bench-e-%d", i)) }},
		{"plugin", func(i int) error { return runJob(host, fmt.Sprintf("bench-p-%d", i)) }},
	}
	for _, c := range cases { // warm: the first invocation starts the runtime
		if err := c.op(-1); err != nil {
			b.Fatal(err)
		}
	}
	// Each round runs every case once, in a rotating order, so that the
	// machine's load drifts over all of them alike.
	took := make([][]time.Duration, len(cases))
	round := 0
	for b.Loop() {
		for k := range cases {
			c := (round + k) % len(cases)
			start := time.Now()
			if err := cases[c].op(round); err != nil {
				b.Fatalf("%s: %v", cases[c].name, err)
			}
			took[c] = append(took[c], time.Since(start))
		}
		round++
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	for c, ds := range took {
		slices.Sort(ds)
		b.ReportMetric(ms(ds[len(ds)/2]), cases[c].name+"-p50-ms")
		b.ReportMetric(ms(ds[len(ds)*9/10]), cases[c].name+"-p90-ms")
	}
}
