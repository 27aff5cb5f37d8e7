package pipeline

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/berthci/berth/host/script"
	"github.com/berthci/berth/sdk"
)

// doc turns a raw string literal that starts with a newline into a file.
func doc(s string) []byte { return []byte(strings.TrimPrefix(s, "\n")) }

// normalize makes empty slices nil so that expected jobs can leave them out.
func normalize(j Job) Job {
	if j.Base == "" {
		j.Base = j.Name
	}
	if j.File == "" {
		j.File = "ci.yml"
	}
	j.AllowFailureSet = false // tested with rules, where it matters
	if len(j.BeforeScript) == 0 {
		j.BeforeScript = nil
	}
	if len(j.Script) == 0 {
		j.Script = nil
	}
	if len(j.AfterScript) == 0 {
		j.AfterScript = nil
	}
	if len(j.Variables) == 0 {
		j.Variables = nil
	}
	if len(j.Image.Entrypoint) == 0 {
		j.Image.Entrypoint = nil
	}
	if len(j.Image.PullPolicy) == 0 {
		j.Image.PullPolicy = nil
	}
	if len(j.AllowFailureExitCodes) == 0 {
		j.AllowFailureExitCodes = nil
	}
	if len(j.Tags) == 0 {
		j.Tags = nil
	}
	return j
}

func mustParse(t *testing.T, data []byte) *Pipeline {
	t.Helper()
	p, err := Parse("ci.yml", data)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return p
}

func TestParseJobs(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []Job
	}{{
		name: "minimal job gets GitLab's defaults",
		yaml: `
job:
  script: echo hi
`,
		want: []Job{{Name: "job", Stage: "test", Line: 1, Script: []string{"echo hi"}, When: "on_success"}},
	}, {
		name: "script as a list",
		yaml: `
job:
  script:
    - echo one
    - 'echo "two: 2"'
`,
		want: []Job{{Name: "job", Stage: "test", Line: 1, Script: []string{"echo one", `echo "two: 2"`}, When: "on_success"}},
	}, {
		name: "nested script lists are flattened in order",
		yaml: `
job:
  before_script: [a, [b, [c, [d]]], e]
  script:
    - one
    - - two
      - - three
    - four
  after_script: [[x], y]
`,
		want: []Job{{
			Name: "job", Stage: "test", Line: 1, When: "on_success",
			BeforeScript: []string{"a", "b", "c", "d", "e"},
			Script:       []string{"one", "two", "three", "four"},
			AfterScript:  []string{"x", "y"},
		}},
	}, {
		name: "multi-line block is one command; numbers and booleans are commands as written",
		yaml: `
job:
  script:
    - |
      for i in 1 2; do
        echo $i
      done
    - true
    - 42
`,
		want: []Job{{Name: "job", Stage: "test", Line: 1, When: "on_success",
			Script: []string{"for i in 1 2; do\n  echo $i\ndone\n", "true", "42"}}},
	}, {
		name: "jobs in file order; hidden jobs ignored; pages is a job",
		yaml: `
.template:
  script: never runs
zeta:
  script: z
.other: not even a mapping
pages:
  stage: deploy
  script: p
alpha:
  stage: build
  script: a
`,
		want: []Job{
			{Name: "zeta", Stage: "test", Line: 3, Script: []string{"z"}, When: "on_success"},
			{Name: "pages", Stage: "deploy", Line: 6, Script: []string{"p"}, When: "on_success"},
			{Name: "alpha", Stage: "build", Line: 9, Script: []string{"a"}, When: "on_success"},
		},
	}, {
		name: "default: applies to every job; the job's own keywords replace it",
		yaml: `
default:
  image: alpine:3
  before_script: [echo default before]
  after_script: [echo default after]
  timeout: 10m
  tags: [linux]
inherits:
  script: x
overrides:
  image: {name: debian, entrypoint: [""], pull_policy: if-not-present}
  before_script: [echo own before]
  after_script: []
  timeout: 1h
  tags: [big]
  script: y
`,
		want: []Job{{
			Name: "inherits", Stage: "test", Line: 7, When: "on_success",
			Image:        sdk.Image{Name: "alpine:3"},
			BeforeScript: []string{"echo default before"},
			Script:       []string{"x"},
			AfterScript:  []string{"echo default after"},
			Timeout:      10 * time.Minute,
			Tags:         []string{"linux"},
		}, {
			Name: "overrides", Stage: "test", Line: 9, When: "on_success",
			Image:        sdk.Image{Name: "debian", Entrypoint: []string{""}, PullPolicy: []string{"if-not-present"}},
			BeforeScript: []string{"echo own before"},
			Script:       []string{"y"},
			Timeout:      time.Hour,
			Tags:         []string{"big"},
		}},
	}, {
		name: "old-style top-level globals apply when default: has none",
		yaml: `
image: ruby:3
before_script: echo global before
after_script: echo global after
default:
  image: node:20
job:
  script: x
`,
		want: []Job{{
			Name: "job", Stage: "test", Line: 6, When: "on_success",
			Image:        sdk.Image{Name: "node:20"},
			BeforeScript: []string{"echo global before"},
			Script:       []string{"x"},
			AfterScript:  []string{"echo global after"},
		}},
	}, {
		name: "job variables in file order, in every form",
		yaml: `
job:
  script: x
  variables:
    PLAIN: hello world
    NUMBER: 1.10
    INT: 0x1F
    BOOL: True
    EMPTY:
    QUOTED: 'it''s "quoted"'
    LONG:
      value: long form
      description: shown in the run form
    RAW:
      value: $NOT_EXPANDED
      expand: false
    EXPANDED: {value: $HOME, expand: true, options: [$HOME, /tmp]}
`,
		want: []Job{{
			Name: "job", Stage: "test", Line: 1, When: "on_success", Script: []string{"x"},
			Variables: []script.Variable{
				{Key: "PLAIN", Value: "hello world"},
				{Key: "NUMBER", Value: "1.10"},
				{Key: "INT", Value: "0x1F"},
				{Key: "BOOL", Value: "true"},
				{Key: "EMPTY", Value: ""},
				{Key: "QUOTED", Value: `it's "quoted"`},
				{Key: "LONG", Value: "long form"},
				{Key: "RAW", Value: "$NOT_EXPANDED", Raw: true},
				{Key: "EXPANDED", Value: "$HOME"},
			},
		}},
	}, {
		name: "image forms",
		yaml: `
a:
  image: alpine
  script: x
b:
  image:
    name: registry.example.com/tools:1
    entrypoint: ["/bin/sh", "-c"]
    pull_policy: [always, if-not-present]
  script: x
`,
		want: []Job{
			{Name: "a", Stage: "test", Line: 1, When: "on_success", Script: []string{"x"}, Image: sdk.Image{Name: "alpine"}},
			{Name: "b", Stage: "test", Line: 4, When: "on_success", Script: []string{"x"}, Image: sdk.Image{
				Name: "registry.example.com/tools:1", Entrypoint: []string{"/bin/sh", "-c"}, PullPolicy: []string{"always", "if-not-present"},
			}},
		},
	}, {
		name: "allow_failure forms; manual jobs may fail unless told otherwise",
		yaml: `
allowed:
  allow_failure: true
  script: x
forbidden:
  allow_failure: false
  script: x
one:
  allow_failure: {exit_codes: 137}
  script: x
some:
  allow_failure:
    exit_codes: [1, 2, 0x10]
  script: x
manual:
  when: manual
  script: x
strict_manual:
  when: manual
  allow_failure: false
  script: x
`,
		want: []Job{
			{Name: "allowed", Stage: "test", Line: 1, When: "on_success", Script: []string{"x"}, AllowFailure: true},
			{Name: "forbidden", Stage: "test", Line: 4, When: "on_success", Script: []string{"x"}},
			{Name: "one", Stage: "test", Line: 7, When: "on_success", Script: []string{"x"}, AllowFailure: true, AllowFailureExitCodes: []int{137}},
			{Name: "some", Stage: "test", Line: 10, When: "on_success", Script: []string{"x"}, AllowFailure: true, AllowFailureExitCodes: []int{1, 2, 16}},
			{Name: "manual", Stage: "test", Line: 14, When: "manual", Script: []string{"x"}, AllowFailure: true},
			{Name: "strict_manual", Stage: "test", Line: 17, When: "manual", Script: []string{"x"}},
		},
	}, {
		name: "when values are kept; timeouts in GitLab's forms",
		yaml: `
a: {script: x, when: always, timeout: 1h 30m}
b: {script: x, when: on_failure, timeout: 10 minutes}
c: {script: x, when: delayed, timeout: 90s}
d: {script: x, when: never, timeout: 3600}
`,
		want: []Job{
			{Name: "a", Stage: "test", Line: 1, When: "always", Script: []string{"x"}, Timeout: 90 * time.Minute},
			{Name: "b", Stage: "test", Line: 2, When: "on_failure", Script: []string{"x"}, Timeout: 10 * time.Minute},
			{Name: "c", Stage: "test", Line: 3, When: "delayed", Script: []string{"x"}, Timeout: 90 * time.Second},
			{Name: "d", Stage: "test", Line: 4, When: "never", Script: []string{"x"}, Timeout: time.Hour},
		},
	}, {
		name: "empty values count as not set",
		yaml: `
stages:
variables:
default:
  before_script: [b]
job:
  before_script:
  stage:
  when:
  image:
  variables:
  script: x
`,
		want: []Job{{Name: "job", Stage: "test", Line: 5, When: "on_success", Script: []string{"x"}, BeforeScript: []string{"b"}}},
	}, {
		name: "trigger and run jobs are left out",
		yaml: `
child:
  trigger: other/project
steps:
  run: [{name: x, script: y}]
job:
  script: x
`,
		want: []Job{{Name: "job", Stage: "test", Line: 5, When: "on_success", Script: []string{"x"}}},
	}, {
		name: "a job defined twice keeps its first place and its last definition",
		yaml: `
a:
  script: first
b:
  script: b
a:
  script: second
`,
		want: []Job{
			{Name: "a", Stage: "test", Line: 5, When: "on_success", Script: []string{"second"}},
			{Name: "b", Stage: "test", Line: 3, When: "on_success", Script: []string{"b"}},
		},
	}, {
		name: "spec header before --- is skipped",
		yaml: `
spec:
  inputs:
    name:
---
job:
  script: x
`,
		want: []Job{{Name: "job", Stage: "test", Line: 5, When: "on_success", Script: []string{"x"}}},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustParse(t, doc(tt.yaml))
			var got []Job
			for _, j := range p.Jobs {
				got = append(got, normalize(*j))
			}
			want := make([]Job, 0, len(tt.want))
			for _, j := range tt.want {
				want = append(want, normalize(j))
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("jobs:\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestParseStages(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string
	}{{
		name: "GitLab's stages when none are given",
		yaml: "job: {script: x}\n",
		want: []string{".pre", "build", "test", "deploy", ".post"},
	}, {
		name: "given stages between .pre and .post",
		yaml: "stages: [lint, test]\njob: {script: x}\n",
		want: []string{".pre", "lint", "test", ".post"},
	}, {
		name: ".pre and .post stay at the ends wherever they are listed",
		yaml: "stages: [.post, test, .pre]\njob: {script: x}\n",
		want: []string{".pre", "test", ".post"},
	}, {
		name: "a stage listed twice keeps its first place",
		yaml: "stages: [build, test, build]\njob: {script: x}\n",
		want: []string{".pre", "build", "test", ".post"},
	}, {
		name: "jobs may use .pre and .post",
		yaml: "stages: [build]\nfirst: {stage: .pre, script: x}\nlast: {stage: .post, script: x}\n",
		want: []string{".pre", "build", ".post"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustParse(t, doc(tt.yaml))
			if !reflect.DeepEqual(p.Stages, tt.want) {
				t.Errorf("Stages = %q, want %q", p.Stages, tt.want)
			}
		})
	}
}

func TestParseGlobalVariables(t *testing.T) {
	p := mustParse(t, doc(`
variables:
  GREETING: hello world
  RAW: {value: $X, expand: false, description: d}
  COUNT: 3
job:
  script: x
  variables:
    GREETING: job wins later
`))
	want := []script.Variable{
		{Key: "GREETING", Value: "hello world"},
		{Key: "RAW", Value: "$X", Raw: true},
		{Key: "COUNT", Value: "3"},
	}
	if !reflect.DeepEqual(p.Variables, want) {
		t.Errorf("Variables = %+v, want %+v", p.Variables, want)
	}
	if got := p.Job("job").Variables; !reflect.DeepEqual(got, []script.Variable{{Key: "GREETING", Value: "job wins later"}}) {
		t.Errorf("job variables = %+v; global and job variables must stay apart", got)
	}
}

func TestParseWarnings(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string
	}{{
		name: "unknown job keyword, with a suggestion",
		yaml: `
job:
  script: x
  tgas: [a]
  colour: blue
`,
		want: []string{
			`ci.yml:3:3: job "job": unknown keyword "tgas" is ignored (did you mean tags?)`,
			`ci.yml:4:3: job "job": unknown keyword "colour" is ignored`,
		},
	}, {
		name: "known job keywords berth does not support",
		yaml: `
job:
  script: x
  rules:
    - if: $CI
  environment: production
child:
  trigger: a/b
`,
		want: []string{
			`ci.yml:5:3: job "job": environment is not supported by berth exec yet and is ignored: no environment is set up`,
			`ci.yml:7:3: job "child": trigger is not supported by berth exec yet and is ignored: the job is left out`,
		},
	}, {
		name: "unsupported top-level keywords",
		yaml: `
include: https://example.com/ci.yml
types: [a]
workflow:
  rules: [{when: always}]
cache: {paths: [x]}
job: {script: x}
`,
		want: []string{
			`ci.yml:1:10: include: remote files are not supported by berth exec yet and are ignored: the jobs of https://example.com/ci.yml are missing`,
			`ci.yml:2:1: types is not supported by berth exec yet and is ignored: it is the old name of stages; rename it to stages`,
		},
	}, {
		name: "default: keywords",
		yaml: `
default:
  hooks: {pre_get_sources_script: [x]}
  imgae: alpine
job: {script: x}
`,
		want: []string{
			`ci.yml:2:3: default: hooks is not supported by berth exec yet and is ignored`,
			`ci.yml:3:3: default: unknown keyword "imgae" is ignored (did you mean image?)`,
		},
	}, {
		name: "top-level globals lose to default:",
		yaml: `
image: old
default:
  image: new
job: {script: x}
`,
		want: []string{`ci.yml:1:1: top-level image is ignored: default: image (line 3) is used instead`},
	}, {
		name: "keys given twice",
		yaml: `
job:
  script: a
job:
  script: b
  script: c
`,
		want: []string{
			`ci.yml:3:1: the pipeline: "job" is given twice (first at line 1); the last one is used`,
			`ci.yml:5:3: job "job": "script" is given twice (first at line 4); the last one is used`,
		},
	}, {
		name: "unknown keys in an image and a variable",
		yaml: `
job:
  script: x
  image: {name: a, docker: {user: me}, entry: [x]}
  variables:
    A: {value: x, descripton: y}
`,
		want: []string{
			`ci.yml:3:20: job "job": image: docker is not supported by berth exec yet and is ignored`,
			`ci.yml:3:40: job "job": image: unknown key "entry" is ignored`,
			`ci.yml:5:19: job "job": variables: A: unknown key "descripton" is ignored (did you mean description?)`,
		},
	}, {
		name: "stage listed twice, spec header",
		yaml: `
spec: {inputs: {}}
---
stages: [a, a]
job: {stage: a, script: x}
`,
		want: []string{
			`ci.yml:1:1: spec: headers are not supported by berth exec yet and are ignored: inputs are not applied`,
			`ci.yml:3:13: stages: "a" is listed twice; the first place counts`,
		},
	}, {
		name: "hidden jobs are not checked",
		yaml: `
.hidden:
  unknown_keyword: 1
  rules: []
job: {script: x}
`,
		want: nil,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustParse(t, doc(tt.yaml))
			var got []string
			for _, w := range p.Warnings {
				got = append(got, w.String())
				if w.File != "ci.yml" || w.Line < 1 || w.Column < 1 {
					t.Errorf("warning %+v has no position", w)
				}
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("warnings:\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // one line per error
	}{{
		name: "empty file",
		yaml: "# nothing\n",
		want: []string{`ci.yml:1:1: the file is empty: a pipeline needs at least one job`},
	}, {
		name: "only hidden jobs",
		yaml: ".a: {script: x}\n",
		want: []string{`ci.yml:1:1: the pipeline has no jobs: add at least one job whose name does not start with "."`},
	}, {
		name: "not a mapping",
		yaml: "- a\n- b\n",
		want: []string{`ci.yml:1:1: the pipeline: expected a mapping, got a list`},
	}, {
		name: "YAML syntax: mapping in a plain scalar",
		yaml: "job:\n  script: echo a: b\n",
		want: []string{`ci.yml:2:17: invalid YAML: mapping values are not allowed in this context`},
	}, {
		name: "YAML syntax: bad indentation",
		yaml: "job:\n  script:\n    - a\n   - b\n",
		want: []string{`ci.yml:4:4: invalid YAML: did not find expected key`},
	}, {
		name: "YAML syntax: tab",
		yaml: "job:\n\tscript: x\n",
		want: []string{`ci.yml:2:1: invalid YAML: found character that cannot start any token`},
	}, {
		name: "YAML syntax: unclosed flow list",
		yaml: "job:\n  script: [a, b\n  stage: test\n",
		want: []string{`ci.yml:2:12: invalid YAML: did not find expected ',' or ']'`},
	}, {
		name: "YAML syntax: unknown anchor",
		yaml: "job:\n  script: *steps\n",
		want: []string{`ci.yml:2:11: invalid YAML: unknown anchor 'steps' referenced`},
	}, {
		name: "YAML syntax: invalid UTF-8",
		yaml: "job:\n  script: \xff\n",
		want: []string{`ci.yml:2:11: invalid YAML: invalid leading UTF-8 octet`},
	}, {
		name: "second document without spec header",
		yaml: "a: {script: x}\n---\nb: {script: y}\n",
		want: []string{`ci.yml:3:1: a second YAML document (after ---) is only allowed after a spec: header`},
	}, {
		name: "job stage not in stages, explicit and default",
		yaml: `
stages: [build]
a:
  stage: deploy
  script: x
b:
  script: x
`,
		want: []string{
			`ci.yml:3:10: job "a": stage "deploy" is not in stages (.pre, build, .post)`,
			`ci.yml:5:1: job "b": stage "test" is not in stages (.pre, build, .post)`,
		},
	}, {
		name: "script missing, empty, or of the wrong kind",
		yaml: `
none:
  stage: test
misspelled:
  scirpt: x
extended:
  extends: .base
nothing:
  script:
empty:
  script: []
mapping:
  script:
    - echo: hi
list_of_null:
  script: [a, ~]
`,
		want: []string{
			`ci.yml:6:12: job "extended": extends: there is no job or template named ".base"`,
			`ci.yml:1:1: job "none": script is required`,
			`ci.yml:3:1: job "misspelled": script is required; is "scirpt" (line 4) a misspelled script?`,
			`ci.yml:5:1: job "extended": script is required`,
			`ci.yml:8:3: job "nothing": script is empty`,
			`ci.yml:10:11: job "empty": script: the list is empty`,
			`ci.yml:13:7: job "mapping": script: expected a string, got a mapping (a ": " in an unquoted string makes a mapping; put the string in quotes)`,
			`ci.yml:15:15: job "list_of_null": script: expected a string, got an empty value`,
		},
	}, {
		name: "script nested too deep",
		yaml: "job:\n  script: [[[[[[[[[[[x]]]]]]]]]]]\n",
		want: []string{`ci.yml:2:21: job "job": script: lists are nested more than 10 deep`},
	}, {
		name: "job is not a mapping",
		yaml: "job: echo hi\n",
		want: []string{`ci.yml:1:6: job "job": expected a mapping, got "echo hi"`},
	}, {
		name: "bad keyword values",
		yaml: `
job:
  script: x
  when: sometimes
  allow_failure: maybe
  timeout: 1 fortnight
  tags: linux
  stage: [a]
  image: {entrypoint: [x]}
`,
		want: []string{
			`ci.yml:3:9: job "job": when: "sometimes" is not one of on_success, on_failure, always, manual, delayed, never`,
			`ci.yml:4:18: job "job": allow_failure: expected true or false, got "maybe"`,
			`ci.yml:5:12: job "job": timeout: invalid duration "1 fortnight": "fortnight" is not a unit (use s, m, h, d, w, mo or y)`,
			`ci.yml:6:9: job "job": tags: expected a list, got "linux"`,
			`ci.yml:7:10: job "job": stage: expected a string, got a list`,
			`ci.yml:8:10: job "job": image: name is required`,
		},
	}, {
		name: "bad allow_failure exit codes",
		yaml: `
a: {script: x, allow_failure: {exit_codes: []}}
b: {script: x, allow_failure: {exit_codes: [1, one]}}
c: {script: x, allow_failure: {exit_code: 1}}
d: {script: x, allow_failure: {}}
`,
		want: []string{
			`ci.yml:1:44: job "a": allow_failure: exit_codes: the list is empty`,
			`ci.yml:2:48: job "b": allow_failure: exit_codes: expected a whole number, got "one"`,
			`ci.yml:3:32: job "c": allow_failure: unknown key "exit_code": the only key allowed is exit_codes`,
			`ci.yml:4:31: job "d": allow_failure: expected exit_codes`,
		},
	}, {
		name: "bad variables, stages and images",
		yaml: `
variables: [A, B]
stages: build
default:
  image: ""
  timeout: 0s
job:
  script: x
  variables:
    LIST: [a]
  image: {name: x, pull_policy: sometimes}
`,
		want: []string{
			`ci.yml:1:12: variables: expected a mapping, got a list`,
			`ci.yml:4:10: default: image: the image name is empty`,
			`ci.yml:5:12: default: timeout: "0s" is not longer than zero`,
			`ci.yml:2:9: stages: expected a list of stage names, got "build"`,
			`ci.yml:9:11: job "job": variables: LIST: expected a string, got a list`,
			`ci.yml:10:33: job "job": image: pull_policy: "sometimes" is not one of always, if-not-present, never`,
		},
	}, {
		name: "an alias where a script is expected",
		yaml: `
.base: &base
  script: [a]
third:
  script: *base
`,
		want: []string{
			`ci.yml:1:8: job "third": script: expected a string, got a mapping (a ": " in an unquoted string makes a mapping; put the string in quotes)`,
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse("ci.yml", doc(tt.yaml))
			if err == nil {
				t.Fatalf("Parse succeeded (%d jobs), want errors %q", len(p.Jobs), tt.want)
			}
			if p != nil {
				t.Errorf("Parse returned a pipeline with its error")
			}
			if got := strings.Split(err.Error(), "\n"); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("errors:\n got %q\nwant %q", got, tt.want)
			}
			var perr *Error
			if !errors.As(err, &perr) || perr.File != "ci.yml" || perr.Line < 1 || perr.Column < 1 {
				t.Errorf("error %v does not hold an *Error with a position", err)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	t.Run("testdata file", func(t *testing.T) {
		path := filepath.Join("testdata", "full.gitlab-ci.yml")
		p, err := Load(path)
		if err != nil {
			t.Fatalf("Load: %v", err)
		}
		if len(p.Warnings) != 1 || !strings.HasPrefix(p.Warnings[0].String(), path+":") {
			t.Errorf("warnings = %v, want one naming %s", p.Warnings, path)
		}
		if got := len(p.Jobs); got != 4 {
			t.Errorf("%d jobs, want 4", got)
		}
	})
	t.Run("errors name the path", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "bad.yml")
		if err := os.WriteFile(path, []byte("job:\n  script: x\n  stage: nowhere\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Load(path)
		if err == nil || !strings.HasPrefix(err.Error(), path+":3:10: ") {
			t.Errorf("Load error = %v, want it to start with %s:3:10", err, path)
		}
	})
	t.Run("missing file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "missing.yml")
		_, err := Load(path)
		if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), path) {
			t.Errorf("Load error = %v, want a not-exist error naming %s", err, path)
		}
	})
	t.Run("the hello example loads without warnings", func(t *testing.T) {
		p, err := Load(filepath.Join("..", "..", "examples", "hello", ".gitlab-ci.yml"))
		if err != nil {
			t.Fatalf("Load: %v", err)
		}
		if len(p.Warnings) > 0 {
			t.Errorf("warnings: %v", p.Warnings)
		}
	})
}

func TestJobsInStageAndJob(t *testing.T) {
	p := mustParse(t, doc(`
stages: [build, test]
unit: {stage: test, script: x}
compile: {stage: build, script: x}
lint: {stage: test, script: x}
`))
	tests := []struct {
		stage string
		want  []string
	}{
		{"build", []string{"compile"}},
		{"test", []string{"unit", "lint"}},
		{".pre", nil},
		{"nope", nil},
	}
	for _, tt := range tests {
		var got []string
		for _, j := range p.JobsInStage(tt.stage) {
			got = append(got, j.Name)
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("JobsInStage(%q) = %q, want %q", tt.stage, got, tt.want)
		}
	}
	if j := p.Job("lint"); j == nil || j.Name != "lint" || j.Line != 4 {
		t.Errorf("Job(lint) = %+v", j)
	}
	if j := p.Job("missing"); j != nil {
		t.Errorf("Job(missing) = %+v, want nil", j)
	}
}

func TestReservedTopLevelKeywords(t *testing.T) {
	// Every reserved keyword the parser does not handle itself must have a
	// note for its warning, or the warning would end in an empty reason.
	handled := map[string]bool{"stages": true, "variables": true, "default": true, "image": true, "before_script": true, "after_script": true,
		"include": true, "workflow": true, "services": true, "cache": true}
	for _, k := range []string{"default", "include", "stages", "variables", "workflow", "image", "services", "cache", "before_script", "after_script", "types"} {
		if !reservedTopLevel(k) {
			t.Errorf("%s is not reserved", k)
		}
		if _, ok := unsupportedTopLevel()[k]; !handled[k] && !ok {
			t.Errorf("%s has no note", k)
		}
	}
	for _, k := range []string{"pages", "build", "spec", ".pre"} {
		if reservedTopLevel(k) {
			t.Errorf("%s is reserved; it must be usable as a job name", k)
		}
	}
}
