// Package pipeline loads a .gitlab-ci.yml into the jobs berth runs.
//
// It reads GitLab CI/CD YAML the way GitLab does before it creates a
// pipeline: YAML anchors, aliases and merge keys (<<); include: of local
// files (deep-merged below the including file); extends: (hashes merged
// deeply, everything else replaced, the job's own keys winning); !reference
// tags; default: and the old top-level globals, with inherit:; and
// parallel: (N copies or a matrix) expanded into jobs named as GitLab names
// them ("test 1/3", "build: [linux, amd64]").
//
// What decides whether and when a job runs (rules, only/except, when,
// needs) is kept as written, checked but not evaluated: that needs the
// variables of a particular pipeline, which the caller has.
//
// Keywords berth does not support are reported as warnings that name the
// keyword and its line; nothing in the file is dropped without a word. Every
// error names the file, line and column at fault, in an included file too.
//
// The file is read as a yaml.Node tree rather than decoded into structs, so
// that every value keeps its position through includes and extends.
package pipeline

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/berthci/berth/host/script"
	"github.com/berthci/berth/sdk"
	"gopkg.in/yaml.v3"
)

// Pipeline is a loaded .gitlab-ci.yml.
type Pipeline struct {
	// Stages in the order they run, always starting with .pre and ending
	// with .post.
	Stages []string
	// Jobs in the order the file defines them, parallel jobs expanded into
	// their instances. Hidden jobs (whose name starts with ".") are not
	// included.
	Jobs []*Job
	// Variables are the global variables, in file order. Each job has those
	// it inherits in Job.GlobalVariables.
	Variables []script.Variable
	// Workflow is the workflow: keyword, nil when the file has none.
	Workflow *Workflow
	// Files are the pipeline file and the files it includes, in the order
	// they were read.
	Files []string
	// Warnings are about parts of the file berth ignored.
	Warnings []Warning
}

// Workflow is workflow: (name and rules).
type Workflow struct {
	Name  string
	Rules []Rule
}

// Job is one job of a pipeline, with extends, default: (or the old-style
// top-level settings) and parallel: already applied.
type Job struct {
	// Name is the job's name; for an instance of a parallel job it is
	// "name 1/3" or "name: [a, b]".
	Name string
	// Base is the job's name in the file (Name without the parallel suffix).
	Base  string
	Stage string
	// File and Line are where the job's name is.
	File string
	Line int
	// BeforeScript, Script and AfterScript are the commands of each step,
	// one entry per command; nested lists in the file are flattened. A job's
	// own before_script, after_script and image replace the default ones.
	BeforeScript []string
	Script       []string
	AfterScript  []string
	// Variables are the job's own variables, in file order, followed for a
	// parallel instance by CI_NODE_INDEX, CI_NODE_TOTAL and its matrix
	// values.
	Variables []script.Variable
	// GlobalVariables are the global variables the job inherits (all of
	// them unless inherit:variables says otherwise).
	GlobalVariables []script.Variable
	Image           sdk.Image
	Services        []sdk.Service
	// AllowFailure lets the job fail without failing the pipeline. It is
	// true by default for when: manual jobs, as in GitLab.
	AllowFailure bool
	// AllowFailureSet says whether allow_failure was given (rules may then
	// not default it).
	AllowFailureSet bool
	// AllowFailureExitCodes, from allow_failure: {exit_codes: …}, are the
	// only exit codes with which the job may fail.
	AllowFailureExitCodes []int
	// When is on_success (the default), on_failure, always, manual, delayed
	// or never.
	When string
	// StartIn is start_in for a delayed job.
	StartIn string
	// Timeout is the job's timeout; 0 means not set.
	Timeout time.Duration
	// Tags are kept for reference; berth exec does not pick runners.
	Tags []string
	// Needs are the jobs this one needs; HasNeeds says needs: was given
	// (needs: [] makes a job start at once).
	Needs    []Need
	HasNeeds bool
	// Dependencies are the jobs whose artifacts the job gets; with
	// HasDependencies false, it gets those of every earlier job (or of its
	// needs).
	Dependencies    []string
	HasDependencies bool
	// Rules, Only and Except decide whether the job is in a pipeline.
	Rules  []Rule
	Only   *Filter
	Except *Filter
	Retry  Retry
	// Matrix holds the matrix values of a parallel: matrix instance; Index
	// and Total the instance's place (1-based) among the job's instances.
	Matrix       map[string]string
	Index, Total int
	Artifacts    *Artifacts
	Caches       []Cache
	// Coverage is the pattern of coverage: (without its slashes).
	Coverage      string
	Interruptible bool
	ResourceGroup string
	// Environment is the name of environment:, which berth does not set up.
	Environment string
}

// Need is one entry of needs:.
type Need struct {
	Job       string
	Artifacts bool
	Optional  bool
	// Matrix, when not empty, picks the instances of a parallel: matrix job
	// whose values match one of its entries.
	Matrix       []map[string]string
	File         string
	Line, Column int
}

// Rule is one entry of rules: (or of workflow:rules). A rule with no
// condition always matches.
type Rule struct {
	If        string
	Changes   []string
	CompareTo string
	Exists    []string
	// When is empty when the rule does not set it.
	When         string
	AllowFailure *bool
	Variables    []script.Variable
	StartIn      string
	File         string
	Line         int
}

// Filter is only: or except:.
type Filter struct {
	Refs      []string
	Variables []string
	Changes   []string
}

// Retry is retry:.
type Retry struct {
	Max int
	// When lists the failures that are retried; empty means always.
	When      []string
	ExitCodes []int
}

// Artifacts is artifacts:.
type Artifacts struct {
	Name      string
	Paths     []string
	Exclude   []string
	Untracked bool
	// When is on_success (default), on_failure or always.
	When     string
	ExpireIn string
	// Dotenv lists the files of reports:dotenv.
	Dotenv []string
}

// Cache is one entry of cache:.
type Cache struct {
	// Key is the key as written ("default" when not given); with KeyFiles
	// the key is made from the files' contents, with KeyPrefix before it.
	Key          string
	KeyFiles     []string
	KeyPrefix    string
	Paths        []string
	Untracked    bool
	Policy       string
	When         string
	FallbackKeys []string
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

// Load reads and parses the pipeline file at path. Files it includes with
// include: local are read from the folder path is in (the project folder).
func Load(path string) (*Pipeline, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read pipeline: %w", err)
	}
	return ParseFS(os.DirFS(filepath.Dir(path)), path, data)
}

// Parse parses data, the contents of the pipeline file named file (file is
// only used in messages). Every problem found is reported, not just the
// first: the error is then an errors.Join of *Error values. A file that
// includes local files cannot be parsed this way: use ParseFS.
func Parse(file string, data []byte) (*Pipeline, error) {
	return ParseFS(nil, file, data)
}

// ParseFS is Parse with a project folder to read include: local files
// from; their names are relative to the folder.
func ParseFS(project fs.FS, file string, data []byte) (*Pipeline, error) {
	l := &loader{file: file, project: project, fileOf: map[*yaml.Node]string{}, warned: map[*yaml.Node]bool{}}
	p := l.pipeline(data)
	if len(l.errs) == 1 {
		return nil, l.errs[0]
	}
	if len(l.errs) > 1 {
		return nil, errors.Join(l.errs...)
	}
	p.Warnings = l.warnings
	p.Files = l.files
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

// Instances returns the jobs name stands for: the job of that name, or
// every instance of the parallel job of that name.
func (p *Pipeline) Instances(name string) []*Job {
	var jobs []*Job
	for _, j := range p.Jobs {
		if j.Name == name || j.Base == name {
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
