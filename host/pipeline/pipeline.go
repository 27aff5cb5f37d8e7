// Package pipeline loads a .gitlab-ci.yml into the jobs berth runs.
//
// It reads the subset of GitLab CI/CD YAML that berth exec supports: stages,
// global and default settings, and jobs with their scripts, variables,
// image, allow_failure, when, timeout and tags. Keywords berth does not
// support yet are reported as warnings that name the keyword and its line;
// nothing in the file is dropped without a word. Every error names the file,
// line and column at fault.
//
// The file is read as a yaml.Node tree rather than decoded into structs, so
// that every value keeps its position and later extensions (extends, needs,
// rules, include, anchors, !reference) can work on the same tree.
package pipeline

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/berthci/berth/host/script"
	"github.com/berthci/berth/sdk"
)

// Pipeline is a loaded .gitlab-ci.yml.
type Pipeline struct {
	// Stages in the order they run, always starting with .pre and ending
	// with .post.
	Stages []string
	// Jobs in the order the file defines them. Hidden jobs (whose name
	// starts with ".") are not included.
	Jobs []*Job
	// Variables are the global variables, in file order. Jobs keep their own
	// in Job.Variables; merging the two (the job's win) is up to the caller.
	Variables []script.Variable
	// Warnings are about parts of the file berth ignored.
	Warnings []Warning
}

// Job is one job of a pipeline, with the default: (or old-style top-level)
// settings already applied.
type Job struct {
	Name  string
	Stage string
	// Line is where the job's name is in the file.
	Line int
	// BeforeScript, Script and AfterScript are the commands of each step,
	// one entry per command; nested lists in the file are flattened. A job's
	// own before_script, after_script and image replace the default ones.
	BeforeScript []string
	Script       []string
	AfterScript  []string
	// Variables are the job's own variables, in file order.
	Variables []script.Variable
	Image     sdk.Image
	// AllowFailure lets the job fail without failing the pipeline. It is
	// true by default for when: manual jobs, as in GitLab.
	AllowFailure bool
	// AllowFailureExitCodes, from allow_failure: {exit_codes: …}, are the
	// only exit codes with which the job may fail; AllowFailure is then
	// false.
	AllowFailureExitCodes []int
	// When is on_success (the default), on_failure, always, manual, delayed
	// or never.
	When string
	// Timeout is the job's timeout; 0 means not set.
	Timeout time.Duration
	// Tags are kept for reference; berth exec does not pick runners.
	Tags []string
}

// Warning is about something in the file that berth ignored.
type Warning struct {
	File         string
	Line, Column int
	Message      string
}

// String formats the warning as file:line:col: message.
func (w Warning) String() string {
	return fmt.Sprintf("%s:%d:%d: %s", w.File, w.Line, w.Column, w.Message)
}

// Error is a problem in a pipeline file that stops it from loading. Parse
// returns one *Error, or several joined with errors.Join (one per line).
type Error struct {
	File         string
	Line, Column int
	Message      string
}

// Error formats the error as file:line:col: message.
func (e *Error) Error() string {
	return fmt.Sprintf("%s:%d:%d: %s", e.File, e.Line, e.Column, e.Message)
}

// Load reads and parses the pipeline file at path.
func Load(path string) (*Pipeline, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read pipeline: %w", err)
	}
	return Parse(path, data)
}

// Parse parses data, the contents of the pipeline file named file (file is
// only used in messages). Every problem found is reported, not just the
// first: the error is then an errors.Join of *Error values.
func Parse(file string, data []byte) (*Pipeline, error) {
	l := &loader{file: file}
	p := l.pipeline(data)
	if len(l.errs) == 1 {
		return nil, l.errs[0]
	}
	if len(l.errs) > 1 {
		return nil, errors.Join(l.errs...)
	}
	p.Warnings = l.warnings
	return p, nil
}

// JobsInStage returns the jobs of stage, in file order.
func (p *Pipeline) JobsInStage(stage string) []*Job {
	var jobs []*Job
	for _, j := range p.Jobs {
		if j.Stage == stage {
			jobs = append(jobs, j)
		}
	}
	return jobs
}

// Job returns the job called name, or nil if there is none.
func (p *Pipeline) Job(name string) *Job {
	for _, j := range p.Jobs {
		if j.Name == name {
			return j
		}
	}
	return nil
}
