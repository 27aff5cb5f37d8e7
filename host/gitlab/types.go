package gitlab

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Info describes the runner on every call that carries it (register,
// verify, job request, job update): GitLab shows it and reads Features to
// decide what it may hand out.
type Info struct {
	Name         string            `json:"name"`
	Version      string            `json:"version"`
	Revision     string            `json:"revision"`
	Platform     string            `json:"platform"`
	Architecture string            `json:"architecture"`
	Executor     string            `json:"executor"`
	Shell        string            `json:"shell"`
	Features     Features          `json:"features"`
	Labels       map[string]string `json:"labels,omitempty"`
}

// Features are what the runner really does. GitLab relies on them (a job
// that needs one the runner lacks is not handed to it), so each must be true
// only when berth and the chosen executor implement it.
type Features struct {
	Variables               bool `json:"variables"`
	Image                   bool `json:"image"`
	Services                bool `json:"services"`
	Artifacts               bool `json:"artifacts"`
	Cache                   bool `json:"cache"`
	FallbackCacheKeys       bool `json:"fallback_cache_keys"`
	Shared                  bool `json:"shared"`
	UploadMultipleArtifacts bool `json:"upload_multiple_artifacts"`
	UploadRawArtifacts      bool `json:"upload_raw_artifacts"`
	Session                 bool `json:"session"`
	Terminal                bool `json:"terminal"`
	Refspecs                bool `json:"refspecs"`
	Masking                 bool `json:"masking"`
	Proxy                   bool `json:"proxy"`
	RawVariables            bool `json:"raw_variables"`
	ArtifactsExclude        bool `json:"artifacts_exclude"`
	MultiBuildSteps         bool `json:"multi_build_steps"`
	TraceReset              bool `json:"trace_reset"`
	TraceChecksum           bool `json:"trace_checksum"`
	TraceSize               bool `json:"trace_size"`
	VaultSecrets            bool `json:"vault_secrets"`
	Cancelable              bool `json:"cancelable"`
	ReturnExitCode          bool `json:"return_exit_code"`
	ServiceVariables        bool `json:"service_variables"`
	ServiceMultipleAliases  bool `json:"service_multiple_aliases"`
	ImageExecutorOpts       bool `json:"image_executor_opts"`
	ServiceExecutorOpts     bool `json:"service_executor_opts"`
	CancelGracefully        bool `json:"cancel_gracefully"`
	NativeStepsIntegration  bool `json:"native_steps_integration"`
	TwoPhaseJobCommit       bool `json:"two_phase_job_commit"`
	JobInputs               bool `json:"job_inputs"`
}

// RegisterRequest is the body of POST /runners (a legacy registration
// token). TagList is comma-separated; RunUntagged, Locked and Paused are
// always sent.
type RegisterRequest struct {
	Description     string `json:"description"`
	MaintenanceNote string `json:"maintenance_note,omitempty"`
	TagList         string `json:"tag_list,omitempty"`
	RunUntagged     bool   `json:"run_untagged"`
	Locked          bool   `json:"locked"`
	AccessLevel     string `json:"access_level,omitempty"`
	MaximumTimeout  int    `json:"maximum_timeout,omitempty"`
	Paused          bool   `json:"paused"`
	Info            Info   `json:"info"`
	Token           string `json:"token"`
}

// RunnerCredentials is GitLab's answer to a registration or a verify.
type RunnerCredentials struct {
	ID             int64      `json:"id"`
	Token          string     `json:"token"`
	TokenExpiresAt *time.Time `json:"token_expires_at"`
}

// JobRequest is the body of POST /jobs/request.
type JobRequest struct {
	Info       Info   `json:"info"`
	Token      string `json:"token"`
	SystemID   string `json:"system_id,omitempty"`
	LastUpdate string `json:"last_update,omitempty"`
}

// JobState is a state the runner reports in PUT /jobs/:id.
type JobState string

// The states a runner reports.
const (
	StatePending JobState = "pending"
	StateRunning JobState = "running"
	StateSuccess JobState = "success"
	StateFailed  JobState = "failed"
)

// TraceSummary is the checksum and size of the whole trace the runner
// produced, sent with the final state so GitLab can tell it has it all.
type TraceSummary struct {
	Checksum string `json:"checksum,omitempty"`
	Bytesize int64  `json:"bytesize"`
}

// UpdateJobRequest is the body of PUT /jobs/:id.
type UpdateJobRequest struct {
	Info          Info          `json:"info"`
	Token         string        `json:"token"`
	State         JobState      `json:"state"`
	FailureReason string        `json:"failure_reason,omitempty"`
	ExitCode      int           `json:"exit_code,omitempty"`
	Checksum      string        `json:"checksum,omitempty"`
	Output        *TraceSummary `json:"output,omitempty"`
}

// JobResponse is a job as GitLab hands it out (the 201 body of
// POST /jobs/request). Fields berth does not use are not decoded.
type JobResponse struct {
	ID            int64        `json:"id"`
	Token         string       `json:"token"`
	AllowGitFetch bool         `json:"allow_git_fetch"`
	JobInfo       JobInfo      `json:"job_info"`
	GitInfo       GitInfo      `json:"git_info"`
	RunnerInfo    RunnerInfo   `json:"runner_info"`
	Variables     []Variable   `json:"variables"`
	Steps         []Step       `json:"steps"`
	Image         *Image       `json:"image"`
	Services      []Image      `json:"services"`
	Artifacts     []Artifact   `json:"artifacts"`
	Cache         []Cache      `json:"cache"`
	Credentials   []Credential `json:"credentials"`
	Dependencies  []Dependency `json:"dependencies"`
	Features      JobFeatures  `json:"features"`
	Hooks         []Hook       `json:"hooks"`
}

// JobInfo is metadata about the job.
type JobInfo struct {
	Name            string `json:"name"`
	Stage           string `json:"stage"`
	ProjectID       int64  `json:"project_id"`
	ProjectName     string `json:"project_name"`
	ProjectFullPath string `json:"project_full_path"`
	PipelineID      int64  `json:"pipeline_id"`
}

// GitInfo says what to check out.
type GitInfo struct {
	RepoURL          string   `json:"repo_url"`
	RepoObjectFormat string   `json:"repo_object_format"`
	Ref              string   `json:"ref"`
	Sha              string   `json:"sha"`
	BeforeSha        string   `json:"before_sha"`
	RefType          string   `json:"ref_type"`
	Refspecs         []string `json:"refspecs"`
	Depth            int      `json:"depth"`
	Protected        *bool    `json:"protected"`
}

// RunnerInfo holds the job's timeout in seconds.
type RunnerInfo struct {
	Timeout int `json:"timeout"`
}

// Variable is a CI/CD variable as GitLab sends it.
type Variable struct {
	Key    string `json:"key"`
	Value  string `json:"value"`
	Public bool   `json:"public"`
	Masked bool   `json:"masked"`
	File   bool   `json:"file"`
	Raw    bool   `json:"raw"`
}

// Step is one script of the job: "script" (before_script and script),
// "after_script", "release".
type Step struct {
	Name         string   `json:"name"`
	Script       []string `json:"script"`
	Timeout      int      `json:"timeout"`
	When         string   `json:"when"`
	AllowFailure bool     `json:"allow_failure"`
}

// Image is the job's image or one of its services.
type Image struct {
	Name       string     `json:"name"`
	Alias      string     `json:"alias"`
	Command    []string   `json:"command"`
	Entrypoint []string   `json:"entrypoint"`
	Variables  []Variable `json:"variables"`
	PullPolicy []string   `json:"pull_policy"`
}

// Artifact is one set of paths to upload: the archive, or a report.
type Artifact struct {
	Name      string   `json:"name"`
	Untracked bool     `json:"untracked"`
	Paths     []string `json:"paths"`
	Exclude   []string `json:"exclude"`
	When      string   `json:"when"`
	Type      string   `json:"artifact_type"`
	Format    string   `json:"artifact_format"`
	ExpireIn  string   `json:"expire_in"`
}

// Cache is one cache of the job.
type Cache struct {
	Key          string   `json:"key"`
	Untracked    bool     `json:"untracked"`
	Policy       string   `json:"policy"`
	Paths        []string `json:"paths"`
	When         string   `json:"when"`
	FallbackKeys []string `json:"fallback_keys"`
}

// Credential is a registry login.
type Credential struct {
	Type     string `json:"type"`
	URL      string `json:"url"`
	Username string `json:"username"`
	Password string `json:"password"`
}

// Dependency is a job whose artifacts this job downloads.
type Dependency struct {
	ID            int64          `json:"id"`
	Name          string         `json:"name"`
	Token         string         `json:"token"`
	ArtifactsFile *ArtifactsFile `json:"artifacts_file"`
}

// ArtifactsFile describes a dependency's archive.
type ArtifactsFile struct {
	Filename string `json:"filename"`
	Size     int64  `json:"size"`
}

// JobFeatures are what GitLab tells the runner about itself.
type JobFeatures struct {
	TraceSections     bool     `json:"trace_sections"`
	FailureReasons    []string `json:"failure_reasons"`
	TokenMaskPrefixes []string `json:"token_mask_prefixes"`
}

// Hook is a script GitLab asks to run at a point of the job
// (pre_get_sources_script, post_get_sources_script).
type Hook struct {
	Name   string   `json:"name"`
	Script []string `json:"script"`
}

// DecodeError is a job payload that could not be used. ID and Token are
// set when at least they could be read, so the job can still be reported
// failed instead of vanishing.
type DecodeError struct {
	ID    int64
	Token string
	Err   error
}

func (e *DecodeError) Error() string {
	if e.ID != 0 {
		return fmt.Sprintf("the payload of job %d is not valid: %v", e.ID, e.Err)
	}
	return fmt.Sprintf("the job payload is not valid: %v", e.Err)
}

func (e *DecodeError) Unwrap() error { return e.Err }

// DecodeJob decodes the 201 body of POST /jobs/request. Fields of the
// wrong type are an error naming them; unknown fields are ignored (GitLab
// adds fields over time). A job without an id or a token is an error.
func DecodeJob(data []byte) (*JobResponse, error) {
	// The id and the token first, so that a job whose other fields are
	// broken can still be failed on GitLab.
	var head struct {
		ID    json.RawMessage `json:"id"`
		Token json.RawMessage `json:"token"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return nil, &DecodeError{Err: describeJSONError(err)}
	}
	var id int64
	var token string
	_ = json.Unmarshal(head.ID, &id)
	_ = json.Unmarshal(head.Token, &token)
	if id <= 0 {
		return nil, &DecodeError{Token: token, Err: errors.New(`field "id" is missing or not a positive number`)}
	}
	if token == "" {
		return nil, &DecodeError{ID: id, Err: errors.New(`field "token" is missing or empty`)}
	}
	var j JobResponse
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&j); err != nil {
		return nil, &DecodeError{ID: id, Token: token, Err: describeJSONError(err)}
	}
	for i, s := range j.Steps {
		if s.Name == "" {
			return nil, &DecodeError{ID: id, Token: token, Err: fmt.Errorf("step %d has no name", i+1)}
		}
	}
	for i, v := range j.Variables {
		if v.Key == "" {
			return nil, &DecodeError{ID: id, Token: token, Err: fmt.Errorf("variable %d has no key", i+1)}
		}
	}
	return &j, nil
}

func describeJSONError(err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Errorf("field %q holds a JSON %s where a %s was expected", te.Field, te.Value, te.Type)
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Errorf("not JSON (at byte %d): %w", se.Offset, err)
	}
	return err
}
