package pipeline

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
)

// FuzzParse checks that ParseFS never panics (includes, anchors, extends
// and !reference included), that every error line starts with a file name
// and a position, and that a pipeline it accepts is consistent: every job
// is in one of its stages and what it needs is there.
func FuzzParse(f *testing.F) {
	seeds := []string{
		"",
		"job: {script: x}\n",
		"stages: [a]\njob:\n  stage: a\n  script: [x, [y]]\n",
		"default: {image: a, timeout: 1h}\njob: {script: x, allow_failure: {exit_codes: [1]}}\n",
		"job:\n  script: echo a: b\n",
		"job:\n\tscript: x\n",
		"a: *x\n",
		"spec: {}\n---\njob: {script: x}\n---\n",
		"job: {script: x, variables: {A: {value: 1, expand: false}}, when: manual}\n",
		"x: [1, 2\n",
		"job: {script: !reference [.a, b]}\n",
		"\xff\xfe",
		".a: &a {script: [x], variables: {A: b}}\njob: {<<: *a, stage: test}\n",
		".t: {script: [x]}\njob: {extends: .t, script: !reference [.t, script]}\n",
		"include: [a.yml, {local: /b.yml}, 'c/*.yml']\njob: {script: x, extends: .fromb}\n",
		"stages: [a, b]\nx: {stage: a, script: x, parallel: 2}\ny: {stage: b, needs: [x], parallel: {matrix: [{A: [1, 2], B: c}]}, script: y}\n",
		"job: {script: x, rules: [{if: '$A == \"b\" && ($C =~ /d/i || $E)', when: manual, allow_failure: true, variables: {X: y}}, {changes: [a/**], exists: [b]}]}\n",
		"job: {script: x, only: {refs: [main, /^rel/], variables: [$A]}, except: [tags], retry: {max: 2, when: [script_failure]}}\n",
		"job: {script: x, artifacts: {paths: [a], exclude: [b], untracked: true, when: always, reports: {dotenv: e}}, cache: [{key: {files: [f]}, paths: [p], policy: pull}], coverage: '/(\\d+)%/', resource_group: r, services: [s, {name: t, alias: u}]}\n",
		"workflow: {rules: [{if: $X, when: never}, {when: always}]}\ndefault: {image: i, retry: 1}\njob: {script: x, inherit: {default: [image], variables: false}}\n",
		"a: &a [*a]\n",
		"a: &a [x, x]\nb: &b [*a, *a]\nc: &c [*b, *b]\njob: {script: *c}\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	for _, path := range []string{
		filepath.Join("testdata", "full.gitlab-ci.yml"),
		filepath.Join("..", "..", "examples", "hello", ".gitlab-ci.yml"),
	} {
		if data, err := os.ReadFile(path); err == nil {
			f.Add(data)
		}
	}
	// The files a fuzzed pipeline may include.
	project := fstest.MapFS{
		"a.yml":    {Data: []byte(".froma: {script: [a]}\n")},
		"b.yml":    {Data: []byte("include: a.yml\n.fromb: {extends: .froma}\n")},
		"c/d.yml":  {Data: []byte("d: {script: [d], stage: test}\n")},
		"loop.yml": {Data: []byte("include: loop.yml\n")},
		"bad.yml":  {Data: []byte("x: [\n")},
	}
	positioned := regexp.MustCompile(`^(f\.yml|a\.yml|b\.yml|c/d\.yml|loop\.yml|bad\.yml):[1-9][0-9]*:[1-9][0-9]*: \S`)
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParseFS(project, "f.yml", data)
		if err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				if !positioned.MatchString(line) {
					t.Fatalf("error line %q has no file:line:col", line)
				}
			}
			return
		}
		if len(p.Jobs) == 0 {
			t.Fatal("Parse accepted a pipeline without jobs")
		}
		for _, j := range p.Jobs {
			if j.Line < 1 || len(j.Script) == 0 || !slices.Contains(p.Stages, j.Stage) {
				t.Fatalf("inconsistent job %+v in stages %q", j, p.Stages)
			}
			for _, n := range j.Needs {
				if len(p.NeedInstances(n)) == 0 {
					t.Fatalf("job %q needs %q, which Parse accepted but is not there", j.Name, n.Job)
				}
			}
		}
		for _, w := range p.Warnings {
			if !positioned.MatchString(w.String()) {
				t.Fatalf("warning %q has no file:line:col", w)
			}
		}
	})
}
