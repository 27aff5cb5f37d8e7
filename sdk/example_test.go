package sdk_test

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/berthci/berth/sdk"
)

// settings is an executor's settings struct: the defaults are the values
// it holds, the tags name and describe each setting.
type settings struct {
	BuildsDir string        `mapstructure:"builds_dir" help:"where build directories go" required:"true"`
	Timeout   time.Duration `mapstructure:"timeout" help:"how long a step may take"`
	Memory    sdk.Size      `mapstructure:"memory" help:"memory limit of a job"`
	Labels    []string      `mapstructure:"labels" help:"labels set on every job"`
	Token     string        `mapstructure:"token" help:"API token" secret:"true"`
}

func defaults() settings {
	return settings{Timeout: time.Hour, Memory: 2 << 30}
}

// Schema turns the settings struct into Info.Config: berth makes a flag
// (--<executor>-<setting>) and a row of `berth plugins inspect` of each
// field, and never prints a secret's value.
func ExampleSchema() {
	for _, f := range sdk.Schema(defaults()) {
		fmt.Printf("%-10s %-8s default=%q required=%v secret=%v\n", f.Name, f.Type, f.Default, f.Required, f.Secret)
	}
	// Output:
	// builds_dir string   default="" required=true secret=false
	// timeout    duration default="1h0m0s" required=false secret=false
	// memory     size     default="2g" required=false secret=false
	// labels     list     default="" required=false secret=false
	// token      string   default="" required=false secret=true
}

// DecodeConfig is all Configure needs: settings come from config.toml
// (typed) or from flags (strings), and are converted to the field's type.
func ExampleDecodeConfig() {
	cfg := defaults()
	err := sdk.DecodeConfig(map[string]any{
		"builds_dir": "/var/lib/builds",
		"timeout":    "30m",
		"memory":     "512m",
		"labels":     "team=ci,tier=2",
	}, &cfg)
	fmt.Println(err)
	fmt.Println(cfg.BuildsDir, cfg.Timeout, cfg.Memory, cfg.Labels)
	// Output:
	// <nil>
	// /var/lib/builds 30m0s 512m [team=ci tier=2]
}

// A mistyped key or a value of the wrong type is refused with a message
// naming it, which berth shows as it is.
func ExampleDecodeConfig_errors() {
	cfg := defaults()
	fmt.Println(sdk.DecodeConfig(map[string]any{"builds_dir": "/b", "timout": "1m"}, &cfg))
	fmt.Println(sdk.DecodeConfig(map[string]any{}, &cfg))
	// Output:
	// unknown setting "timout" (known settings: builds_dir, timeout, memory, labels, token)
	// setting "builds_dir" is required (string): where build directories go
}

func ExampleParseSize() {
	for _, s := range []string{"512m", "2GiB", "100MB", "4096"} {
		n, err := sdk.ParseSize(s)
		fmt.Println(s, int64(n), n, err)
	}
	// Output:
	// 512m 536870912 512m <nil>
	// 2GiB 2147483648 2g <nil>
	// 100MB 100000000 100000000 <nil>
	// 4096 4096 4k <nil>
}

// echo is the smallest executor: it prints each script instead of running
// it. A real one is in docs/writing-an-executor.md and
// examples/custom-executor.
type echo struct{}

func (echo) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{
		Name:         "echo",
		Version:      "1.0.0", // the version berth plugins publish and install check
		Description:  "prints scripts instead of running them",
		Capabilities: sdk.Capabilities{Shells: []string{"sh"}},
		Config:       sdk.Schema(defaults()),
	}, nil
}

func (echo) Configure(_ context.Context, s map[string]any) error {
	cfg := defaults()
	return sdk.DecodeConfig(s, &cfg)
}

func (echo) Prepare(_ context.Context, job sdk.Job) (sdk.Handle, error) {
	return sdk.Handle{JobID: job.ID, Version: 1, BuildDir: "/nowhere"}, nil
}

func (echo) Run(_ context.Context, _ sdk.Handle, step sdk.Step, out sdk.Output) (int, error) {
	_, err := fmt.Fprintf(out.Stdout, "would run %s with %s:\n%s", step.Name, step.Shell, step.Script)
	return 0, err
}

func (echo) Upload(context.Context, sdk.Handle, string, io.Reader) error { return nil }

func (echo) Download(context.Context, sdk.Handle, []string, io.Writer) error { return nil }

func (echo) Cleanup(context.Context, sdk.Handle) error { return nil }

// Serve is the whole main function of an executor plugin. Build the
// program as berth-executor-<name>, test it with sdk/sdktest, and share it
// with berth plugins publish; hosts get it with berth plugins install.
func ExampleServe() {
	var e sdk.Executor = echo{}
	sdk.Serve(e) // does not return
}
