// Package lambda is berth's AWS Lambda executor: it runs each CI job as one
// invocation of the berth function (lambda/function), through the AWS SDK.
//
// A Lambda execution environment keeps nothing between invocations, so the
// executor is one-shot (sdk.Capabilities.OneShot): the host hands it every
// step of a job in one RunSteps call. Prepare only checks the job and
// keeps its description; Upload keeps the files, compressed, in this
// process; RunSteps sends the steps, the files and the paths to send back
// to the function in one request (lambda/protocol) and writes each step's
// output once the invocation has answered (Lambda does not stream a
// synchronous response); Download serves the files that came back; Cleanup
// drops what the job held.
//
// Limits are checked before invoking: a request must be smaller than 6 MB
// (the uploaded files travel gzip-compressed and base64-encoded), a job's
// timeout may not exceed the function's (at most 15 minutes). Output that
// does not fit in the 6 MB response is cut by the function, each cut
// stream ending with a line saying how much was dropped.
//
// A cancelled job cannot stop its invocation: Lambda offers no way to. The
// executor stops waiting, reports the job cancelled and says so in the
// output; the function runs on until the job ends or until it stops the
// job before its own timeout. The invocation keeps its max_concurrency
// slot until it really ends.
//
// Invoke is not idempotent (a retried invocation runs the job twice), so
// the executor retries only invocations Lambda refused for throttling.
package lambda

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/arn"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/config"
	awslambda "github.com/aws/aws-sdk-go-v2/service/lambda"

	"github.com/berthci/berth/lambda/protocol"
	"github.com/berthci/berth/sdk"
)

// Version is the lambda executor's version.
const Version = "0.1.0"

// settings are the executor's settings ([runners.lambda] in config.toml).
type settings struct {
	FunctionName   string        `mapstructure:"function_name" required:"true" help:"name or ARN of the berth function (see docs/lambda.md)"`
	Qualifier      string        `mapstructure:"qualifier" help:"version or alias of the function to invoke (empty: $LATEST)"`
	Region         string        `mapstructure:"region" help:"AWS region (empty: from the function's ARN or the standard AWS configuration)"`
	Endpoint       string        `mapstructure:"endpoint" help:"Lambda API endpoint URL to use instead of AWS's (e.g. a Runtime Interface Emulator)"`
	Timeout        time.Duration `mapstructure:"timeout" help:"the function's configured timeout (at most 15m); jobs with a longer timeout are refused"`
	BuildDir       string        `mapstructure:"build_dir" help:"directory inside the function the job runs in (below its /tmp, which is emptied for every job)"`
	MaxConcurrency int           `mapstructure:"max_concurrency" help:"most invocations at once from this runner (0: no limit but Lambda's)"`
	Environment    []string      `mapstructure:"environment" help:"NAME=VALUE variables set for every script"`
}

func defaultSettings() settings {
	return settings{Timeout: protocol.MaxTimeout, BuildDir: "/tmp/build"}
}

// invoker is what the executor needs of the Lambda client.
type invoker interface {
	Invoke(ctx context.Context, in *awslambda.InvokeInput, opts ...func(*awslambda.Options)) (*awslambda.InvokeOutput, error)
}

// profile is one configuration: the settings and the client made from
// them. Jobs keep the profile they were prepared with.
type profile struct {
	s      settings
	region string
	client invoker
	// slots holds one token per running invocation (nil: no limit).
	slots chan struct{}
}

// Executor is the lambda executor. Its methods are safe for concurrent use.
type Executor struct {
	log     *slog.Logger
	awsOpts []func(*config.LoadOptions) error

	mu   sync.Mutex
	prof *profile
	jobs map[string]*job
}

// Option changes how New sets up the executor.
type Option func(*Executor)

// WithLogger makes the executor log to l instead of slog's default logger.
func WithLogger(l *slog.Logger) Option { return func(e *Executor) { e.log = l } }

// WithAWSConfig adds options to the loading of the AWS configuration
// (after berth's own), e.g. static credentials.
func WithAWSConfig(opts ...func(*config.LoadOptions) error) Option {
	return func(e *Executor) { e.awsOpts = append(e.awsOpts, opts...) }
}

// New returns a lambda executor; it needs Configure (function_name at
// least) before it can prepare jobs.
func New(opts ...Option) *Executor {
	e := &Executor{jobs: map[string]*job{}}
	for _, o := range opts {
		o(e)
	}
	return e
}

var (
	_ sdk.Executor    = (*Executor)(nil)
	_ sdk.BatchRunner = (*Executor)(nil)
)

func (e *Executor) logger() *slog.Logger {
	if e.log != nil {
		return e.log
	}
	return slog.Default()
}

// Info implements sdk.Executor.
func (e *Executor) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{
		Name:        "lambda",
		Version:     Version,
		Description: "runs each job as one invocation of the berth function in AWS Lambda (sh scripts, no images or services)",
		Capabilities: sdk.Capabilities{
			OneShot:  true,
			Isolated: true,
			Shells:   []string{"sh"},
			// Lambda's own limit; a shorter function timeout (setting
			// "timeout") is enforced by Prepare.
			MaxJobTimeout: protocol.MaxTimeout,
		},
		Config: sdk.Schema(defaultSettings()),
	}, nil
}

// Configure implements sdk.Executor. It loads the AWS configuration
// (region and the standard credential chain; credentials are resolved at
// the first invocation).
func (e *Executor) Configure(ctx context.Context, raw map[string]any) error {
	s := defaultSettings()
	if err := sdk.DecodeConfig(raw, &s); err != nil {
		return fmt.Errorf("lambda executor: %w", err)
	}
	if err := s.check(); err != nil {
		return fmt.Errorf("lambda executor: %w", err)
	}
	region := s.Region
	if a, err := arn.Parse(s.FunctionName); err == nil {
		switch {
		case region == "":
			region = a.Region
		case a.Region != "" && a.Region != region:
			return fmt.Errorf(`lambda executor: function_name is an ARN in region %s, but setting "region" is %s`, a.Region, region)
		}
	}
	opts := []func(*config.LoadOptions) error{
		// Invoke runs the job: retry only what Lambda refused to start.
		config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = 5
				o.Retryables = []retry.IsErrorRetryable{
					retry.NoRetryCanceledError{},
					retry.RetryableErrorCode{Codes: map[string]struct{}{"TooManyRequestsException": {}}},
				}
			})
		}),
	}
	if region != "" {
		opts = append(opts, config.WithRegion(region))
	}
	cfg, err := config.LoadDefaultConfig(ctx, append(opts, e.awsOpts...)...)
	if err != nil {
		return fmt.Errorf("lambda executor: loading the AWS configuration: %w", err)
	}
	if cfg.Region == "" {
		return errors.New("lambda executor: no AWS region: set region in [runners.lambda] or AWS_REGION, or give function_name as an ARN")
	}
	client := awslambda.NewFromConfig(cfg, func(o *awslambda.Options) {
		if s.Endpoint != "" {
			o.BaseEndpoint = aws.String(s.Endpoint)
		}
	})
	p := &profile{s: s, region: cfg.Region, client: client}
	if s.MaxConcurrency > 0 {
		p.slots = make(chan struct{}, s.MaxConcurrency)
	}
	e.mu.Lock()
	e.prof = p
	e.mu.Unlock()
	return nil
}

func (s *settings) check() error {
	if strings.TrimSpace(s.FunctionName) == "" {
		return errors.New(`setting "function_name" is required: the name or ARN of the berth function`)
	}
	if s.Timeout <= 0 || s.Timeout > protocol.MaxTimeout {
		return fmt.Errorf(`setting "timeout" must be the function's timeout, more than 0 and at most %s (Lambda's limit), got %s`, protocol.MaxTimeout, s.Timeout)
	}
	if !path.IsAbs(s.BuildDir) || path.Clean(s.BuildDir) == "/" {
		return fmt.Errorf(`setting "build_dir" must be an absolute path below the function's /tmp, got %q`, s.BuildDir)
	}
	s.BuildDir = path.Clean(s.BuildDir)
	if s.MaxConcurrency < 0 {
		return fmt.Errorf(`setting "max_concurrency" must be 0 (no limit) or more, got %d`, s.MaxConcurrency)
	}
	for _, kv := range s.Environment {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return fmt.Errorf(`setting "environment": %q is not NAME=VALUE`, kv)
		}
	}
	return nil
}

// reserve is how long before the function's timeout it stops a job:
// a twentieth of the timeout, between 1 and 5 seconds.
func (s settings) reserve() time.Duration {
	return min(max(s.Timeout/20, time.Second), 5*time.Second)
}

// describe names the function for messages.
func (p *profile) describe() string {
	name := fmt.Sprintf("Lambda function %q", p.s.FunctionName)
	if p.s.Qualifier != "" {
		name += fmt.Sprintf(" (qualifier %q)", p.s.Qualifier)
	}
	return name + " in " + p.region
}
