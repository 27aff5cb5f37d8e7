package localrun

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"

	"github.com/berthci/berth/host/glob"
	"github.com/berthci/berth/host/pipeline"
	"github.com/berthci/berth/host/rules"
	"github.com/berthci/berth/host/script"
)

// Project is the local checkout a pipeline runs for.
type Project struct {
	// Dir is the project folder (where .gitlab-ci.yml is).
	Dir string
	// Git is nil when the folder is not in a git repository.
	Git *Git

	mu      sync.Mutex
	files   []string            // every file, for rules:exists
	changed map[string][]string // by compare_to
}

// allFiles lists the files of the project (not under .git), once.
func (p *Project) allFiles() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.files != nil {
		return p.files
	}
	p.files = []string{}
	filepath.WalkDir(p.Dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() && d.Name() == ".git" {
			return fs.SkipDir
		}
		if !d.IsDir() {
			if rel, err := filepath.Rel(p.Dir, path); err == nil {
				p.files = append(p.files, filepath.ToSlash(rel))
			}
		}
		return nil
	})
	return p.files
}

// changedFiles returns the files changed against compareTo, or nil with
// ok false when there is no repository to compare with (rules:changes is
// then true, as GitLab has it for pipelines without a push).
func (p *Project) changedFiles(ctx context.Context, compareTo string) ([]string, bool, error) {
	if p.Git == nil {
		return nil, false, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if files, ok := p.changed[compareTo]; ok {
		return files, true, nil
	}
	files, err := p.Git.Changed(ctx, compareTo)
	if err != nil {
		return nil, false, err
	}
	if p.changed == nil {
		p.changed = map[string][]string{}
	}
	p.changed[compareTo] = files
	return files, true, nil
}

// Decision is what rules, only/except and when make of a job in this
// pipeline.
type Decision struct {
	// When is on_success, on_failure, always, manual or never (the job is
	// not in the pipeline); delayed counts as on_success.
	When         string
	AllowFailure bool
	// Variables come from the rule that matched.
	Variables []script.Variable
	// Reason says which rule or filter decided, for --list and skips.
	Reason string
}

// Decide evaluates a job's rules (or only/except) with the values of its
// variables.
func Decide(ctx context.Context, proj *Project, j *pipeline.Job, values map[string]string) (Decision, error) {
	lookup := func(k string) (string, bool) { v, ok := values[k]; return v, ok }
	d := Decision{When: j.When, AllowFailure: j.AllowFailure}
	if len(j.Rules) > 0 {
		for i, r := range j.Rules {
			ok, err := ruleMatches(ctx, proj, r, lookup, values)
			if err != nil {
				return d, fmt.Errorf("job %q: rules (%s:%d): %w", j.Name, r.File, r.Line, err)
			}
			if !ok {
				continue
			}
			d.Reason = fmt.Sprintf("rule %d (line %d)", i+1, r.Line)
			if r.When != "" {
				d.When = r.When
			}
			if r.AllowFailure != nil {
				d.AllowFailure = *r.AllowFailure
			} else if !j.AllowFailureSet {
				d.AllowFailure = d.When == "manual"
			}
			d.Variables = r.Variables
			return normalizeWhen(d), nil
		}
		d.When, d.Reason = "never", "no rule matches"
		return d, nil
	}
	only := j.Only
	if only == nil && j.Except == nil {
		only = &pipeline.Filter{Refs: []string{"branches", "tags"}}
	}
	if only != nil {
		ok, why, err := filterMatches(ctx, proj, only, lookup, values, true)
		if err != nil {
			return d, fmt.Errorf("job %q: only: %w", j.Name, err)
		}
		if !ok {
			d.When, d.Reason = "never", "only: "+why
			return d, nil
		}
	}
	if j.Except != nil {
		ok, why, err := filterMatches(ctx, proj, j.Except, lookup, values, false)
		if err != nil {
			return d, fmt.Errorf("job %q: except: %w", j.Name, err)
		}
		if ok {
			d.When, d.Reason = "never", "except: "+why
			return d, nil
		}
	}
	return normalizeWhen(d), nil
}

func normalizeWhen(d Decision) Decision {
	if d.When == "delayed" {
		d.When = "on_success"
		if d.Reason != "" {
			d.Reason += "; "
		}
		d.Reason += "delayed runs at once"
	}
	return d
}

// ruleMatches reports whether every condition of r holds.
func ruleMatches(ctx context.Context, proj *Project, r pipeline.Rule, lookup rules.Lookup, values map[string]string) (bool, error) {
	if r.If != "" {
		e, err := rules.Parse(r.If)
		if err != nil {
			return false, err
		}
		if !e.Eval(lookup) {
			return false, nil
		}
	}
	if r.Changes != nil {
		ok, err := changes(ctx, proj, r.Changes, ExpandWith(r.CompareTo, values), values)
		if err != nil || !ok {
			return false, err
		}
	}
	if r.Exists != nil && !exists(proj, r.Exists, values) {
		return false, nil
	}
	return true, nil
}

func changes(ctx context.Context, proj *Project, patterns []string, compareTo string, values map[string]string) (bool, error) {
	files, ok, err := proj.changedFiles(ctx, compareTo)
	if err != nil {
		return false, err
	}
	if !ok {
		return true, nil
	}
	for _, p := range patterns {
		p = ExpandWith(p, values)
		for _, f := range files {
			if glob.Match(p, f) {
				return true, nil
			}
		}
	}
	return false, nil
}

func exists(proj *Project, patterns []string, values map[string]string) bool {
	files := proj.allFiles()
	for _, p := range patterns {
		p = ExpandWith(p, values)
		if !glob.HasMeta(p) {
			if _, err := os.Lstat(filepath.Join(proj.Dir, filepath.FromSlash(strings.TrimPrefix(p, "/")))); err == nil {
				return true
			}
			continue
		}
		for _, f := range files {
			if glob.Match(p, f) {
				return true
			}
		}
	}
	return false
}

// refKeywords map the keywords of only/except:refs to the pipeline sources
// they stand for.
func refKeywords() map[string]string {
	return map[string]string{
		"api": "api", "chat": "chat", "external": "external", "external_pull_requests": "external_pull_request_event",
		"merge_requests": "merge_request_event", "pipelines": "pipeline", "pushes": "push",
		"schedules": "schedule", "triggers": "trigger", "web": "web",
	}
}

// filterMatches evaluates only: (all given keys must match) or except:
// (any given key matching excludes), and says why.
func filterMatches(ctx context.Context, proj *Project, f *pipeline.Filter, lookup rules.Lookup, values map[string]string, all bool) (bool, string, error) {
	var results []bool
	var why []string
	if f.Refs != nil {
		ok := refsMatch(f.Refs, values)
		results = append(results, ok)
		why = append(why, "refs "+strings.Join(f.Refs, ", "))
	}
	if f.Variables != nil {
		ok := false
		for _, v := range f.Variables {
			e, err := rules.Parse(v)
			if err != nil {
				return false, "", err
			}
			if e.Eval(lookup) {
				ok = true
				break
			}
		}
		results = append(results, ok)
		why = append(why, "variables")
	}
	if f.Changes != nil {
		ok, err := changes(ctx, proj, f.Changes, "", values)
		if err != nil {
			return false, "", err
		}
		results = append(results, ok)
		why = append(why, "changes")
	}
	if all {
		for i, r := range results {
			if !r {
				return false, why[i] + " do not match", nil
			}
		}
		return true, "", nil
	}
	for i, r := range results {
		if r {
			return true, why[i] + " match", nil
		}
	}
	return false, "", nil
}

func refsMatch(refs []string, values map[string]string) bool {
	ref := values["CI_COMMIT_REF_NAME"]
	source := values["CI_PIPELINE_SOURCE"]
	for _, r := range refs {
		r, _, _ = strings.Cut(r, "@") // ref@project: this project
		switch {
		case r == "branches":
			if values["CI_COMMIT_BRANCH"] != "" {
				return true
			}
		case r == "tags":
			if values["CI_COMMIT_TAG"] != "" {
				return true
			}
		case refKeywords()[r] != "":
			if source == refKeywords()[r] {
				return true
			}
		case len(r) > 1 && strings.HasPrefix(r, "/") && strings.LastIndexByte(r, '/') > 0:
			end := strings.LastIndexByte(r, '/')
			pat := r[1:end]
			if strings.Contains(r[end+1:], "i") {
				pat = "(?i)" + pat
			}
			if re, err := regexp.Compile(pat); err == nil && re.MatchString(ref) {
				return true
			}
		case r == ref:
			return true
		}
	}
	return false
}

// Workflow evaluates workflow:rules: whether the pipeline runs, and the
// variables of the rule that matched.
func Workflow(ctx context.Context, proj *Project, w *pipeline.Workflow, values map[string]string) (bool, []script.Variable, string, error) {
	if w == nil || len(w.Rules) == 0 {
		return true, nil, "", nil
	}
	lookup := func(k string) (string, bool) { v, ok := values[k]; return v, ok }
	for i, r := range w.Rules {
		ok, err := ruleMatches(ctx, proj, r, lookup, values)
		if err != nil {
			return false, nil, "", fmt.Errorf("workflow: rules (%s:%d): %w", r.File, r.Line, err)
		}
		if ok {
			return r.When != "never", r.Variables, fmt.Sprintf("workflow rule %d (line %d)", i+1, r.Line), nil
		}
	}
	return false, nil, "no workflow rule matches", nil
}

// jobIndex finds jobs by name in a plan.
func jobIndex(jobs []*PlannedJob) map[string][]int {
	idx := map[string][]int{}
	for i, pj := range jobs {
		idx[pj.Job.Name] = append(idx[pj.Job.Name], i)
		if pj.Job.Base != pj.Job.Name {
			idx[pj.Job.Base] = append(idx[pj.Job.Base], i)
		}
	}
	return idx
}

func containsAny(list []string, names ...string) bool {
	for _, n := range names {
		if slices.Contains(list, n) {
			return true
		}
	}
	return false
}
