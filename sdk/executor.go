// Package sdk is the public contract between berth and its executor plugins.
//
// An executor runs CI jobs somewhere: on this host, in a container, on a
// remote machine, in a pod or a serverless function. It is a separate
// program whose main function is one call:
//
//	func main() { sdk.Serve(myexecutor.New()) }
//
// The berth host starts the program as a go-plugin process, speaks the gRPC
// protocol in sdk/proto to it, and calls the Executor methods below. One
// plugin process serves many jobs at the same time: nothing an executor keeps
// may be per-process global, and every method may be called concurrently for
// different handles.
//
// The order of calls for one job is:
//
//	Info, Configure            once per plugin process (Configure again on reload)
//	Prepare                    once, retried with the same Job on a transport error
//	Upload*, Run*, Download*   any number, in any order, never concurrently for one handle
//	Cleanup                    at least once, also after a failed or partial Prepare
//
// The host persists the Handle that Prepare returns before it calls anything
// else, so that a fresh plugin process (after a crash) can still clean up.
//
// sdk/sdktest is the conformance suite that checks an executor keeps this
// contract; run it from your executor's tests.
package sdk

import (
	"context"
	"errors"
	"io"
	"time"
)

// ProtocolVersion is the version of the executor protocol this SDK speaks.
// go-plugin negotiates it at start-up; a host that does not speak it refuses
// the plugin with a message naming both versions.
const ProtocolVersion = 1

// Executor is what an executor plugin implements.
type Executor interface {
	// Info describes the executor. It is called once after start-up, before
	// Configure, and must not depend on configuration.
	Info(ctx context.Context) (Info, error)

	// Configure hands over the runner-level settings: the executor's table
	// of config.toml (e.g. [runners.docker]) and flags generated from
	// Info.Config. Decode them with DecodeConfig. An unknown key or a value
	// of the wrong type is an error that names the key. Configure may be
	// called again with new settings; jobs already prepared keep theirs.
	Configure(ctx context.Context, settings map[string]any) error

	// Prepare creates the job's environment (a build directory, a
	// container, a pod, a VM) and returns a Handle for it. It must be safe
	// to retry with the same Job: a second call for the same Job.ID reuses
	// or replaces what the first one made, never leaks it. On error, the
	// host still calls Cleanup with a Handle holding only JobID.
	Prepare(ctx context.Context, job Job) (Handle, error)

	// Run runs one step's script in the job's build directory and returns
	// its exit code. Output goes to out.Stdout and out.Stderr as it is
	// produced; the SDK chunks it. A non-zero exit code is not an error: an
	// error means the step could not run or its end is unknown (a system
	// failure). When ctx is cancelled, Run stops the script: SIGTERM (or the
	// environment's equivalent) to everything the step started, SIGKILL
	// after step.GracePeriod, and returns only once nothing of the step is
	// left running.
	Run(ctx context.Context, h Handle, step Step, out Output) (exitCode int, err error)

	// Upload extracts the tar stream into dir, a path relative to the build
	// directory ("" is the build directory itself), keeping file modes and
	// symbolic links. Entries that would land outside dir are an error.
	Upload(ctx context.Context, h Handle, dir string, archive io.Reader) error

	// Download writes a tar stream of paths (relative to the build
	// directory; directories recursively; symbolic links as links) to
	// archive. A path that does not exist is skipped, not an error.
	Download(ctx context.Context, h Handle, paths []string, archive io.Writer) error

	// Cleanup releases everything the job holds, including processes still
	// running. It is idempotent, and must work after a failed or partial
	// Prepare and from a plugin process that did not prepare the job.
	Cleanup(ctx context.Context, h Handle) error
}

// BatchRunner is implemented by executors whose environment keeps nothing
// between calls (Capabilities.OneShot): the host hands them every step of a
// job in one call. RunSteps runs the steps in order with their When
// semantics and returns one result per step; out receives each step's output
// tagged with its index. Executors that are not one-shot do not implement it:
// the SDK runs a batch through Run, one step after another.
type BatchRunner interface {
	RunSteps(ctx context.Context, h Handle, steps []Step, out StepOutput) ([]StepResult, error)
}

// Output is where a step's output goes. Both writers are safe for
// concurrent use; writes to them keep their relative order.
type Output struct {
	Stdout io.Writer
	Stderr io.Writer
}

// StepOutput gives the Output for the step with the given index.
type StepOutput func(step int) Output

// StepResult is how one step ended.
type StepResult struct {
	ExitCode int
	// Err is a system failure: the step could not run or its end is unknown.
	Err error
	// Skipped is set for a step that did not run because an earlier one
	// failed or the run was cancelled.
	Skipped bool
	// Canceled is set for a step stopped by a cancel.
	Canceled bool
	// TimedOut is set for a step stopped because it ran past Step.Timeout.
	TimedOut bool
}

// Info describes an executor.
type Info struct {
	Name        string
	Version     string
	Description string
	// ProtocolVersion is filled in by Serve; executors leave it zero.
	ProtocolVersion int
	Capabilities    Capabilities
	// Config is the schema of the settings Configure accepts; build it with
	// Schema from the executor's settings struct.
	Config []ConfigField
}

// Capabilities are what an executor promises. The host and sdktest rely
// on them: promise only what the executor really does.
type Capabilities struct {
	// Image: Job.Image selects what the script runs in.
	Image bool
	// Services: Job.Services are started next to the job.
	Services bool
	// CancelGracefully: a cancelled step gets SIGTERM and its grace period
	// before SIGKILL.
	CancelGracefully bool
	// OneShot: the environment keeps nothing between calls, so the host
	// sends every step at once (the executor implements BatchRunner) and
	// declares the paths it will download in Job.DownloadPaths.
	OneShot bool
	// Interactive: a terminal can be attached to a running job.
	Interactive bool
	// Isolated: concurrent jobs cannot see each other's files or processes.
	Isolated bool
	// Shells the executor can run scripts with, best first ("bash", "sh").
	Shells []string
	// MaxJobTimeout, when not zero, is the longest job the executor can run
	// (a serverless function's limit). The host gives a job without a
	// timeout of its own this one when it is shorter than the host's
	// default; a job asking for more is refused by Prepare.
	MaxJobTimeout time.Duration
}

// Handle identifies a prepared job environment. The host stores it
// verbatim and passes it back on every call for the job.
type Handle struct {
	// JobID is the Job.ID the handle was prepared for.
	JobID string
	// Version is the executor's format version of State, so a newer plugin
	// can read handles an older one wrote.
	Version int
	// State is the executor's own, opaque to the host.
	State []byte
	// BuildDir is the job's build directory as the script sees it.
	BuildDir string
}

// Image is a container or VM image.
type Image struct {
	Name       string
	Entrypoint []string
	// PullPolicy lists the allowed pull policies, best first
	// ("always", "if-not-present", "never").
	PullPolicy []string
}

// Service is a container started next to the job.
type Service struct {
	Image     Image
	Aliases   []string
	Command   []string
	Variables map[string]string
}

// Credential is a registry login.
type Credential struct {
	Registry string
	Username string
	Password string
}

// Job is what Prepare gets: everything about the environment, nothing
// about the scripts (those come with each Step).
type Job struct {
	// ID is unique for each attempt of a job; use it to name resources.
	ID   string
	Name string
	// Image is the job's image (executors with Capabilities.Image).
	Image Image
	// Services are started next to the job (Capabilities.Services).
	Services []Service
	// Timeout is the whole job's timeout; the host enforces it, executors
	// may use it to label resources for garbage collection.
	Timeout time.Duration
	// Labels are set on every resource the job creates (containers, pods).
	Labels map[string]string
	// DownloadPaths are the paths the host will Download after the last
	// step; one-shot executors must collect them.
	DownloadPaths []string
	// Credentials are registry logins for the job's images.
	Credentials []Credential
	// ExecutorVariables are job variables meant for the executor itself
	// (DOCKER_AUTH_CONFIG, …). The script gets every variable through the
	// step script, never through these.
	ExecutorVariables map[string]string
	// Shell is the shell the host generates scripts for ("bash" or "sh").
	Shell string
}

// When says whether a step runs after an earlier one failed.
type When int

const (
	// OnSuccess steps run only if every earlier step exited 0.
	OnSuccess When = iota
	// Always steps run whatever happened before (after_script).
	Always
)

// Step is one script to run in a job's environment.
type Step struct {
	// Name is the step's name ("script", "after_script", …).
	Name string
	// Script is the whole script, generated by the host for Shell. Run it as
	// a file or from a pipe; do not put it on a command line (scripts are
	// larger than ARG_MAX).
	Script string
	// Shell is the interpreter the script is written for: "bash" or "sh".
	Shell string
	// GracePeriod is how long a cancelled step gets between SIGTERM and
	// SIGKILL.
	GracePeriod time.Duration
	// Timeout, when not zero, stops the step (as a cancel) after that long.
	Timeout time.Duration
	// When the step runs in a batch after an earlier step failed.
	When When
}

// ErrNotFound is returned (wrapped) for a handle the executor does not know.
var ErrNotFound = errors.New("not found")
