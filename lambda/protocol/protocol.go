// Package protocol is the JSON that berth's lambda executor sends to the
// berth function in AWS Lambda, and the JSON the function answers with.
//
// One invocation runs one whole job: the executor sends every step of the
// job, the files to place in the build directory and the paths to send
// back; the function runs the steps one after another with /bin/sh and
// answers with each step's output and exit code and a tar of the paths.
//
// Both sides check Version. A function that gets a request of another
// version fails the invocation with a message naming both versions; an
// executor that gets a response of another version reports the same. Fields
// are only ever added within a version, and readers ignore fields they do
// not know.
//
// Binary data ([]byte: output, archives) travels as base64, as
// encoding/json writes it, so that output that is not UTF-8 arrives intact.
package protocol

import "time"

// Version is the version of the request and response formats.
const Version = 1

// Limits of a synchronous Lambda invocation (RequestResponse). The request
// must be smaller than RequestLimit; a response may have up to
// ResponseLimit bytes (the Runtime Interface Emulator and the service both
// refuse one byte more).
const (
	RequestLimit  = 6 << 20
	ResponseLimit = 6<<20 + 100
)

// MaxTimeout is the longest a Lambda function may run.
const MaxTimeout = 15 * time.Minute

// When says whether a step runs after an earlier one failed.
type When string

const (
	// OnSuccess steps run only when every earlier step exited 0.
	OnSuccess When = "on_success"
	// Always steps run whatever happened before (after_script), as long as
	// the invocation has time left.
	Always When = "always"
)

// Request is what the executor sends: one job.
type Request struct {
	Version int    `json:"version"`
	JobID   string `json:"job_id"`
	// BuildDir is the absolute path of the directory the steps run in. It
	// must lie inside the function's scratch directory (/tmp in Lambda),
	// which the function empties before and after every invocation.
	BuildDir string `json:"build_dir"`
	// Env is set for every step, on top of the function's own environment.
	Env map[string]string `json:"env,omitempty"`
	// Uploads are extracted into the build directory before the first step,
	// in order.
	Uploads []Upload `json:"uploads,omitempty"`
	Steps   []Step   `json:"steps"`
	// DownloadPaths (relative to the build directory) are sent back as a
	// tar after the last step.
	DownloadPaths []string `json:"download_paths,omitempty"`
	// ReserveMS is how long before the invocation's deadline the function
	// stops the job, so that it can still answer before Lambda kills it.
	ReserveMS int64 `json:"reserve_ms,omitempty"`
	// MaxResponseBytes bounds the size of the response; output beyond it is
	// cut (ResponseLimit - 100 when zero).
	MaxResponseBytes int `json:"max_response_bytes,omitempty"`
}

// Upload is a tree to place in the build directory.
type Upload struct {
	// Dir is relative to the build directory ("" is the directory itself).
	Dir string `json:"dir"`
	// TarGz is a gzip-compressed tar stream.
	TarGz []byte `json:"tar_gz"`
}

// Step is one script.
type Step struct {
	Name   string `json:"name"`
	Script string `json:"script"`
	// Shell is "sh" (run with /bin/sh) or "bash".
	Shell string `json:"shell"`
	When  When   `json:"when"`
	// TimeoutMS stops the step after that long (0: only the invocation's
	// deadline stops it).
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
	// GraceMS is the time between SIGTERM and SIGKILL when the step is
	// stopped.
	GraceMS int64 `json:"grace_ms,omitempty"`
}

// Response is what the function answers when it could run the request.
// When it could not (a request it does not understand, a build directory
// outside its scratch directory), the invocation fails instead, with
// Lambda's error format ({"errorMessage": …, "errorType": …}).
type Response struct {
	Version int          `json:"version"`
	Steps   []StepResult `json:"steps"`
	// FilesTarGz holds the download paths as a gzip-compressed tar.
	FilesTarGz []byte `json:"files_tar_gz,omitempty"`
	// FilesError says why the files could not be sent back.
	FilesError string `json:"files_error,omitempty"`
	// DroppedBytes is how much output was cut to fit the response.
	DroppedBytes int64 `json:"dropped_bytes,omitempty"`
}

// StepResult is how one step ended.
type StepResult struct {
	Stdout []byte `json:"stdout,omitempty"`
	Stderr []byte `json:"stderr,omitempty"`
	// ExitCode is the shell's exit status, or 128 + the signal that killed
	// it.
	ExitCode int  `json:"exit_code"`
	Skipped  bool `json:"skipped,omitempty"`
	// TimedOut is set for a step stopped at its timeout or at the
	// invocation's deadline.
	TimedOut bool `json:"timed_out,omitempty"`
	// Deadline is set for a step stopped, or skipped, because the
	// invocation ran out of time.
	Deadline bool `json:"deadline,omitempty"`
	// Error says why the step could not run or how its end is unknown.
	Error string `json:"error,omitempty"`
}
