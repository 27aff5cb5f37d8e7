package pipeline

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics, that every error line starts
// with the file name and a position, and that a pipeline it accepts is
// consistent: every job is in one of its stages.
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
	positioned := regexp.MustCompile(`^f\.yml:[1-9][0-9]*:[1-9][0-9]*: \S`)
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse("f.yml", data)
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
		}
		for _, w := range p.Warnings {
			if !positioned.MatchString(w.String()) {
				t.Fatalf("warning %q has no file:line:col", w)
			}
		}
	})
}
