package pipeline

import (
	"reflect"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/berthci/berth/host/script"
	"github.com/berthci/berth/sdk"
)

// jobSummary is the part of a job the semantics tests compare.
type jobSummary struct {
	Name      string
	Stage     string
	Script    []string
	Before    []string
	Vars      map[string]string
	Image     string
	Needs     []string
	Artifacts []string
}

func summarize(j *Job) jobSummary {
	s := jobSummary{Name: j.Name, Stage: j.Stage, Script: j.Script, Before: j.BeforeScript, Image: j.Image.Name}
	for _, v := range j.Variables {
		if s.Vars == nil {
			s.Vars = map[string]string{}
		}
		s.Vars[v.Key] = v.Value
	}
	for _, n := range j.Needs {
		s.Needs = append(s.Needs, n.Job)
	}
	if j.Artifacts != nil {
		s.Artifacts = j.Artifacts.Paths
	}
	return s
}

func TestYAMLSemantics(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string // other files of the project
		yaml  string
		want  []jobSummary
	}{{
		name: "anchors, aliases and merge keys; explicit keys win over merged ones",
		yaml: `
.vars: &vars
  A: from-anchor
  B: from-anchor
.steps: &steps
  - echo one
  - echo two
.job: &job
  stage: build
  script: *steps
build:
  <<: *job
  variables:
    <<: *vars
    B: own
other:
  <<: [*job]
  stage: test
`,
		want: []jobSummary{
			{Name: "build", Stage: "build", Script: []string{"echo one", "echo two"}, Vars: map[string]string{"A": "from-anchor", "B": "own"}},
			{Name: "other", Stage: "test", Script: []string{"echo one", "echo two"}},
		},
	}, {
		name: "extends: hashes merged deeply, arrays replaced, last parent and the job itself win",
		yaml: `
.base:
  image: base
  variables: {A: base, B: base}
  script: [base]
  artifacts: {paths: [a, b], when: always}
.middle:
  extends: .base
  variables: {B: middle, C: middle}
  before_script: [middle]
.other:
  image: other
  script: [other]
job:
  extends: [.middle, .other]
  variables: {C: job}
  artifacts: {paths: [c]}
`,
		want: []jobSummary{{
			Name: "job", Stage: "test", Image: "other", Script: []string{"other"}, Before: []string{"middle"},
			Vars: map[string]string{"A": "base", "B": "middle", "C": "job"}, Artifacts: []string{"c"},
		}},
	}, {
		name: "!reference picks keys of templates (after extends), nested lists flattened",
		yaml: `
.setup:
  before_script: [setup]
  script: [one, two]
.vars:
  variables: {X: x}
.ext:
  extends: .setup
job:
  before_script:
    - !reference [.ext, before_script]
    - own
  script:
    - !reference [.setup, script]
    - three
  variables: !reference [.vars, variables]
`,
		want: []jobSummary{{
			Name: "job", Stage: "test", Before: []string{"setup", "own"}, Script: []string{"one", "two", "three"},
			Vars: map[string]string{"X": "x"},
		}},
	}, {
		name: "include: local files, several, nested, wildcard; the including file wins",
		files: map[string]string{
			"ci/a.yml":        "include: [ci/nested/c.yml]\nvariables: {V: a, W: a}\nfrom_a: {script: [a]}\nshared: {script: [from-a], stage: build}\n",
			"ci/b.yml":        "from_b: {script: [b]}\n",
			"ci/nested/c.yml": ".tmpl: {script: [c]}\n",
			"more/x.yml":      "from_x: {extends: .tmpl}\n",
		},
		yaml: `
include:
  - local: /ci/a.yml
  - ci/b.yml
  - local: more/*.yml
stages: [build, test]
variables: {W: main}
shared:
  script: [main]
`,
		want: []jobSummary{
			{Name: "from_a", Stage: "test", Script: []string{"a"}},
			{Name: "shared", Stage: "build", Script: []string{"main"}},
			{Name: "from_b", Stage: "test", Script: []string{"b"}},
			{Name: "from_x", Stage: "test", Script: []string{"c"}},
		},
	}, {
		name: "default: applies unless the job (or what it extends) sets it, or inherit says no",
		yaml: `
default:
  image: def
  before_script: [def]
.tmpl:
  image: tmpl
a:
  extends: .tmpl
  script: [a]
b:
  inherit: {default: false}
  script: [b]
c:
  inherit: {default: [before_script]}
  script: [c]
`,
		want: []jobSummary{
			{Name: "a", Stage: "test", Image: "tmpl", Before: []string{"def"}, Script: []string{"a"}},
			{Name: "b", Stage: "test", Script: []string{"b"}},
			{Name: "c", Stage: "test", Before: []string{"def"}, Script: []string{"c"}},
		},
	}, {
		name: "parallel: N and matrix names as GitLab's; needs on every instance",
		yaml: `
stages: [build, test]
build:
  stage: build
  parallel: 2
  script: [b]
test:
  parallel:
    matrix:
      - OS: [linux, mac]
        ARCH: amd64
      - OS: bsd
  needs: [build]
  script: [t]
`,
		want: []jobSummary{
			{Name: "build 1/2", Stage: "build", Script: []string{"b"}, Vars: map[string]string{"CI_NODE_INDEX": "1", "CI_NODE_TOTAL": "2"}},
			{Name: "build 2/2", Stage: "build", Script: []string{"b"}, Vars: map[string]string{"CI_NODE_INDEX": "2", "CI_NODE_TOTAL": "2"}},
			{Name: "test: [linux, amd64]", Stage: "test", Script: []string{"t"}, Needs: []string{"build"}, Vars: map[string]string{"CI_NODE_INDEX": "1", "CI_NODE_TOTAL": "3", "OS": "linux", "ARCH": "amd64"}},
			{Name: "test: [mac, amd64]", Stage: "test", Script: []string{"t"}, Needs: []string{"build"}, Vars: map[string]string{"CI_NODE_INDEX": "2", "CI_NODE_TOTAL": "3", "OS": "mac", "ARCH": "amd64"}},
			{Name: "test: [bsd]", Stage: "test", Script: []string{"t"}, Needs: []string{"build"}, Vars: map[string]string{"CI_NODE_INDEX": "3", "CI_NODE_TOTAL": "3", "OS": "bsd"}},
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fsys := fstest.MapFS{}
			for name, data := range tt.files {
				fsys[name] = &fstest.MapFile{Data: []byte(data)}
			}
			p, err := ParseFS(fsys, ".gitlab-ci.yml", doc(tt.yaml))
			if err != nil {
				t.Fatalf("ParseFS: %v", err)
			}
			var got []jobSummary
			for _, j := range p.Jobs {
				got = append(got, summarize(j))
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("jobs:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestKeywordValues(t *testing.T) {
	p, err := Parse("ci.yml", doc(`
stages: [build, test]
build:
  stage: build
  script: [x]
  artifacts:
    paths: [dist/, "*.log"]
    exclude: [dist/tmp/**]
    untracked: true
    when: always
    reports: {dotenv: build.env}
  cache:
    - key: {files: [go.sum], prefix: go}
      paths: [.cache]
      policy: pull
    - paths: [vendor]
  retry: {max: 2, when: [script_failure], exit_codes: [3]}
  coverage: '/total: (\d+)%/'
  resource_group: prod
  interruptible: true
test:
  script: [x]
  services:
    - postgres:16
    - name: redis:7
      alias: cache,kv
      variables: {A: b}
  rules:
    - if: $CI_COMMIT_BRANCH == "main" && $X =~ /y/
      when: manual
      allow_failure: true
      variables: {R: r}
    - changes: {paths: [src/**], compare_to: main}
    - exists: [go.mod]
      when: never
  dependencies: [build]
  needs: [{job: build, artifacts: false, optional: true}]
`))
	if err != nil {
		t.Fatal(err)
	}
	b, tj := p.Job("build"), p.Job("test")
	yes := true
	checks := []struct {
		name      string
		got, want any
	}{
		{"artifacts", *b.Artifacts, Artifacts{Paths: []string{"dist/", "*.log"}, Exclude: []string{"dist/tmp/**"}, Untracked: true, When: "always", Dotenv: []string{"build.env"}}},
		{"caches", b.Caches, []Cache{
			{Key: "default", KeyFiles: []string{"go.sum"}, KeyPrefix: "go", Paths: []string{".cache"}, Policy: "pull", When: "on_success"},
			{Key: "default", Paths: []string{"vendor"}, Policy: "pull-push", When: "on_success"},
		}},
		{"retry", b.Retry, Retry{Max: 2, When: []string{"script_failure"}, ExitCodes: []int{3}}},
		{"coverage", b.Coverage, `total: (\d+)%`},
		{"resource_group", b.ResourceGroup, "prod"},
		{"interruptible", b.Interruptible, true},
		{"services", tj.Services, []sdk.Service{
			{Image: sdk.Image{Name: "postgres:16"}},
			{Image: sdk.Image{Name: "redis:7"}, Aliases: []string{"cache", "kv"}, Variables: map[string]string{"A": "b"}},
		}},
		{"rules", tj.Rules, []Rule{
			{If: `$CI_COMMIT_BRANCH == "main" && $X =~ /y/`, When: "manual", AllowFailure: &yes, Variables: []script.Variable{{Key: "R", Value: "r"}}, File: "ci.yml", Line: 28},
			{Changes: []string{"src/**"}, CompareTo: "main", File: "ci.yml", Line: 32},
			{Exists: []string{"go.mod"}, When: "never", File: "ci.yml", Line: 33},
		}},
		{"needs", tj.Needs, []Need{{Job: "build", Artifacts: false, Optional: true, File: "ci.yml", Line: 36, Column: 11}}},
		{"dependencies", tj.Dependencies, []string{"build"}},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", c.name, c.got, c.want)
		}
	}
}

func TestSemanticErrors(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		yaml  string
		want  []string
	}{{
		name: "extends cycles, unknown parents, too deep",
		yaml: `
.a: {extends: .b}
.b: {extends: .a}
job: {extends: .a, script: x}
other: {extends: .nope, script: x}
`,
		want: []string{
			`ci.yml:2:15: job ".b": extends: circular extends: .a → .b → .a`,
			`ci.yml:4:18: job "other": extends: there is no job or template named ".nope"`,
		},
	}, {
		name: "!reference to something missing",
		yaml: `
.t: {script: [x]}
job:
  script: !reference [.t, scirpt]
`,
		want: []string{
			`ci.yml:3:11: !reference [.t, scirpt]: .t has no key "scirpt"`,
			`ci.yml:3:11: job "job": script: a !reference tag cannot be used here`,
		},
	}, {
		name:  "errors in an included file name that file",
		files: map[string]string{"ci/bad.yml": "bad:\n  script: x\n  when: sometimes\n"},
		yaml:  "include: ci/bad.yml\njob: {script: x}\nmissing:\n  script: x\n  needs: [nope]\n",
		want: []string{
			`ci/bad.yml:3:9: job "bad": when: "sometimes" is not one of on_success, on_failure, always, manual, delayed, never`,
			`ci.yml:5:11: job "missing": needs: there is no job named "nope"`,
		},
	}, {
		name:  "missing include and YAML error in an include",
		files: map[string]string{"broken.yml": "a: [1,\n"},
		yaml:  "include: [missing.yml, broken.yml]\njob: {script: x}\n",
		want: []string{
			`ci.yml:1:11: include: cannot read local file missing.yml: file does not exist`,
			`broken.yml:1:6: invalid YAML: did not find expected node content`,
		},
	}, {
		name: "needs on a later stage, rules with only, bad if",
		yaml: `
stages: [a, b]
first:
  stage: a
  script: x
  needs: [second]
second:
  stage: b
  script: x
  rules: [{if: '$A = "x"'}]
  only: [main]
`,
		want: []string{
			`ci.yml:9:16: job "second": rules: if: at character 4: unexpected "="`,
			`ci.yml:9:3: job "second": rules cannot be used together with only or except (line 10)`,
			`ci.yml:5:11: job "first": needs: "second" is in stage b, which comes after the job's stage a`,
		},
	}, {
		name: "alias bomb",
		yaml: `
a: &a [x, x, x, x, x, x, x, x, x, x]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
job: {script: x}
`,
		want: []string{`ci.yml:1:1: the YAML aliases of this file expand to more than 1048576 values`},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fsys := fstest.MapFS{}
			for name, data := range tt.files {
				fsys[name] = &fstest.MapFile{Data: []byte(data)}
			}
			_, err := ParseFS(fsys, "ci.yml", doc(tt.yaml))
			if err == nil {
				t.Fatalf("ParseFS succeeded, want errors %q", tt.want)
			}
			if got := strings.Split(err.Error(), "\n"); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("errors:\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}
