package localrun

import (
	"bytes"
	"context"
	"reflect"
	"strings"
	"testing"

	"github.com/berthci/berth/host/job"
	"github.com/berthci/berth/host/pipeline"
	"github.com/berthci/berth/host/script"
)

func v(k, val string) script.Variable { return script.Variable{Key: k, Value: val} }

func TestValuesAndForScript(t *testing.T) {
	vars := []script.Variable{
		raw("CI_PROJECT_DIR", "/home/me/project"),
		v("A", "a"),
		v("B", "$A-b"),
		v("C", "${B}/c"),
		{Key: "RAW", Value: "$A", Raw: true},
		v("DOLLAR", "$$A costs $ 5"),
		v("CYCLE1", "x$CYCLE2"),
		v("CYCLE2", "y$CYCLE1"),
		v("DIR", "$CI_PROJECT_DIR/out"),
		v("UNKNOWN", "[$NOPE]"),
		v("A", "a2"), // a later one wins
	}
	values := Values(vars)
	wantValues := map[string]string{
		"A": "a2", "B": "a2-b", "C": "a2-b/c", "RAW": "$A", "DOLLAR": "$A costs $ 5",
		"DIR": "/home/me/project/out", "UNKNOWN": "[]",
	}
	for k, want := range wantValues {
		if values[k] != want {
			t.Errorf("Values[%s] = %q, want %q", k, values[k], want)
		}
	}
	if c := values["CYCLE1"]; strings.Count(c, "x") > 2 {
		t.Errorf("a cycle expanded without end: %q", c)
	}
	got := map[string]script.Variable{}
	for _, s := range ForScript(vars) {
		got[s.Key] = s
	}
	if _, ok := got["CI_PROJECT_DIR"]; ok {
		t.Errorf("ForScript kept CI_PROJECT_DIR, which the job runner sets")
	}
	// What the script sees: expand the script's values the way
	// host/script does, with the runner's CI_PROJECT_DIR.
	lookup := map[string]string{"CI_PROJECT_DIR": "/builds/x"}
	for k, s := range got {
		lookup[k] = s.Value
	}
	final := func(k string) string {
		s := got[k]
		if s.Raw {
			return s.Value
		}
		return script.Expand(s.Value, func(n string) (string, bool) { x, ok := lookup[n]; return x, ok })
	}
	for k, want := range map[string]string{"B": "a2-b", "C": "a2-b/c", "RAW": "$A", "DOLLAR": "$A costs $ 5", "DIR": "/builds/x/out"} {
		if f := final(k); f != want {
			t.Errorf("the script sees %s=%q, want %q (passed %+v)", k, f, want, got[k])
		}
	}
}

func TestDecide(t *testing.T) {
	branch := map[string]string{"CI_COMMIT_BRANCH": "main", "CI_COMMIT_REF_NAME": "main", "CI_PIPELINE_SOURCE": "push", "MODE": "full"}
	tag := map[string]string{"CI_COMMIT_TAG": "v1", "CI_COMMIT_REF_NAME": "v1", "CI_PIPELINE_SOURCE": "push"}
	yes, no := true, false
	tests := []struct {
		name   string
		job    pipeline.Job
		values map[string]string
		when   string
		allow  bool
		vars   []string
	}{
		{"no rules: branches and tags", pipeline.Job{When: "on_success"}, branch, "on_success", false, nil},
		{"no rules on a tag", pipeline.Job{When: "on_success"}, tag, "on_success", false, nil},
		{"first matching rule wins", pipeline.Job{When: "on_success", Rules: []pipeline.Rule{
			{If: `$MODE == "x"`, When: "never"},
			{If: `$MODE == "full"`, When: "manual", Variables: []script.Variable{v("R", "2")}},
			{When: "always"},
		}}, branch, "manual", true, []string{"R"}},
		{"no rule matches", pipeline.Job{When: "on_success", Rules: []pipeline.Rule{{If: "$CI_COMMIT_TAG"}}}, branch, "never", false, nil},
		{"a rule without when takes the job's", pipeline.Job{When: "manual", AllowFailure: true, Rules: []pipeline.Rule{{}}}, branch, "manual", true, nil},
		{"manual by rule but allow_failure: false on the job", pipeline.Job{When: "on_success", AllowFailureSet: true, Rules: []pipeline.Rule{{When: "manual"}}}, branch, "manual", false, nil},
		{"rules: allow_failure wins", pipeline.Job{When: "on_success", AllowFailure: true, AllowFailureSet: true, Rules: []pipeline.Rule{{AllowFailure: &no}}}, branch, "on_success", false, nil},
		{"rules: allow_failure true", pipeline.Job{When: "on_success", Rules: []pipeline.Rule{{AllowFailure: &yes}}}, branch, "on_success", true, nil},
		{"delayed runs as on_success", pipeline.Job{When: "delayed"}, branch, "on_success", false, nil},
		{"only: tags on a branch", pipeline.Job{When: "on_success", Only: &pipeline.Filter{Refs: []string{"tags"}}}, branch, "never", false, nil},
		{"only: pattern", pipeline.Job{When: "on_success", Only: &pipeline.Filter{Refs: []string{"/^MA/i"}}}, branch, "on_success", false, nil},
		{"only: name@project", pipeline.Job{When: "on_success", Only: &pipeline.Filter{Refs: []string{"main@group/project"}}}, branch, "on_success", false, nil},
		{"only: refs and variables must both match", pipeline.Job{When: "on_success", Only: &pipeline.Filter{Refs: []string{"main"}, Variables: []string{`$MODE == "x"`}}}, branch, "never", false, nil},
		{"except: any match excludes", pipeline.Job{When: "on_success", Except: &pipeline.Filter{Refs: []string{"tags"}, Variables: []string{"$MODE"}}}, branch, "never", false, nil},
		{"except alone keeps the default only", pipeline.Job{When: "on_success", Except: &pipeline.Filter{Refs: []string{"schedules"}}}, branch, "on_success", false, nil},
		{"only: pushes", pipeline.Job{When: "on_success", Only: &pipeline.Filter{Refs: []string{"pushes"}}}, branch, "on_success", false, nil},
		{"only: web", pipeline.Job{When: "on_success", Only: &pipeline.Filter{Refs: []string{"web"}}}, branch, "never", false, nil},
	}
	proj := &Project{Dir: t.TempDir()}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := tt.job
			j.Name = "job"
			d, err := Decide(context.Background(), proj, &j, tt.values)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, x := range d.Variables {
				names = append(names, x.Key)
			}
			if d.When != tt.when || d.AllowFailure != tt.allow || !reflect.DeepEqual(names, tt.vars) {
				t.Errorf("got when=%s allow_failure=%v vars=%v (%s), want %s %v %v", d.When, d.AllowFailure, names, d.Reason, tt.when, tt.allow, tt.vars)
			}
		})
	}
}

func TestRetryable(t *testing.T) {
	script := func(code int) job.Result {
		return job.Result{Status: job.Failed, FailureReason: job.ScriptFailure, ExitCode: code}
	}
	system := job.Result{Status: job.Failed, FailureReason: job.SystemFailure, ExitCode: -1}
	timeout := job.Result{Status: job.Failed, FailureReason: job.Timeout, ExitCode: -1}
	tests := []struct {
		retry pipeline.Retry
		res   job.Result
		want  bool
	}{
		{pipeline.Retry{Max: 1}, script(1), true},
		{pipeline.Retry{Max: 1}, system, true},
		{pipeline.Retry{Max: 1, When: []string{"script_failure"}}, system, false},
		{pipeline.Retry{Max: 1, When: []string{"runner_system_failure"}}, system, true},
		{pipeline.Retry{Max: 1, When: []string{"stuck_or_timeout_failure"}}, timeout, true},
		{pipeline.Retry{Max: 1, ExitCodes: []int{137}}, script(1), false},
		{pipeline.Retry{Max: 1, ExitCodes: []int{137}}, script(137), true},
		{pipeline.Retry{Max: 1, When: []string{"always"}, ExitCodes: []int{2}}, system, false},
	}
	for _, tt := range tests {
		if got := retryable(tt.retry, tt.res); got != tt.want {
			t.Errorf("retryable(%+v, %s %d) = %v, want %v", tt.retry, tt.res.FailureReason, tt.res.ExitCode, got, tt.want)
		}
	}
}

func TestPathMatcher(t *testing.T) {
	tracked := map[string]bool{"src/main.go": true, "README": true}
	keep := pathMatcher([]string{"dist/*.js", "out/"}, []string{"out/tmp/**", "**/*.map"}, true, tracked)
	tests := map[string]bool{
		"dist/app.js":      true,
		"dist/app.css":     true, // untracked
		"dist/sub/x.js":    true, // untracked
		"out":              true,
		"out/a/b.txt":      true,
		"out/tmp/x":        false,
		"out/a.map":        false,
		"src/main.go":      false, // tracked
		"README":           false,
		"new.txt":          true,
		".git/config":      false,
		"dist/app.js.map":  false,
		"src/generated.go": true,
	}
	for name, want := range tests {
		if got := keep(name, false); got != want {
			t.Errorf("keep(%q) = %v, want %v", name, got, want)
		}
	}
	if keep("dist", true) {
		t.Errorf("a folder that only contains matches is not itself an artifact")
	}
}

func TestCoverage(t *testing.T) {
	tests := []struct {
		pattern, output, want string
	}{
		{`Coverage: \d+\.\d+%`, "Coverage: 10.0%\nCoverage: 55.5%\ndone\n", "55.5"},
		{`^total:\s+\(statements\)\s+(\d+\.\d+)%`, "total:\t(statements)\t71.3%", "71.3"},
		{`lines: (\d+)`, "\x1b[32mlines: 12\x1b[0m of 20\n", "12"},
		{`nothing`, "no match\n", ""},
	}
	for _, tt := range tests {
		var sink bytes.Buffer
		c := &coverageWriter{re: mustRegexp(t, tt.pattern), w: &sink}
		c.Write([]byte(tt.output))
		c.flush()
		if got := c.value(); got != tt.want {
			t.Errorf("coverage of %q with %q = %q, want %q", tt.output, tt.pattern, got, tt.want)
		}
		if sink.String() != tt.output {
			t.Errorf("the trace was changed: %q", sink.String())
		}
	}
}

func TestEnvFileAndAssignments(t *testing.T) {
	vars, err := ParseEnvFile("f.env", strings.NewReader("# comment\nA=1\nexport B = two words \nC='single $x'\nD=\"a\\nb \\\"q\\\"\"\n\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []script.Variable{v("A", "1"), v("B", "two words"), v("C", "single $x"), v("D", "a\nb \"q\"")}
	if !reflect.DeepEqual(vars, want) {
		t.Errorf("got %+v, want %+v", vars, want)
	}
	if _, err := ParseEnvFile("f.env", strings.NewReader("A=1\nnot an assignment\n")); err == nil || !strings.Contains(err.Error(), "f.env:2:") {
		t.Errorf("error %v does not name f.env:2", err)
	}
	if _, err := ParseAssignment("1X=2"); err == nil {
		t.Errorf("1X=2 was accepted")
	}
	if a, err := ParseAssignment("K=v=w"); err != nil || a.Value != "v=w" {
		t.Errorf("K=v=w: %+v %v", a, err)
	}
	if s := Slug("Feature/ÄB_c--42" + strings.Repeat("x", 80)); len(s) > 63 || !strings.HasPrefix(s, "feature-b-c-42") {
		t.Errorf("Slug = %q", s)
	}
}

func TestPlanErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		sel  Selection
		want string
	}{
		{"needs a job rules leave out", "a: {script: x, rules: [{if: $NOPE}]}\nb: {script: x, needs: [a]}\n", Selection{}, `job "b" needs "a", but it is not in this pipeline: no rule matches`},
		{"optional need left out is fine", "a: {script: x, rules: [{if: $NOPE}]}\nb: {script: x, needs: [{job: a, optional: true}]}\n", Selection{}, ""},
		{"unknown job named", "a: {script: x}\n", Selection{Jobs: []string{"b"}}, `no job "b" in the pipeline (jobs: a)`},
		{"named job not in the pipeline", "a: {script: x, only: [tags]}\nb: {script: x}\n", Selection{Jobs: []string{"a"}}, `job "a" is not in this pipeline: only: refs tags do not match`},
		{"unknown stage", "a: {script: x}\n", Selection{Stages: []string{"nope"}}, `--stage nope: there is no such stage`},
		{"unknown manual job", "a: {script: x}\n", Selection{Manual: []string{"b"}}, `--manual no job "b"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := pipeline.Parse("ci.yml", []byte(tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			_, err = NewPlan(context.Background(), Config{Pipeline: p, Project: &Project{Dir: dir}, Predefined: Predefined(nil, dir, 1, timeZero()), Selection: tt.sel})
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("NewPlan: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("NewPlan error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}
