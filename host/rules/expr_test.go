package rules

import (
	"strings"
	"testing"
)

func TestEval(t *testing.T) {
	vars := map[string]string{
		"CI_COMMIT_BRANCH":   "main",
		"CI_PIPELINE_SOURCE": "push",
		"EMPTY":              "",
		"PATTERN":            "/^ma/",
		"NOT_A_PATTERN":      "main",
		"MSG":                "Fix: [skip tests]\nsecond line",
	}
	lookup := func(n string) (string, bool) { v, ok := vars[n]; return v, ok }
	tests := []struct {
		expr string
		want bool
	}{
		{`$CI_COMMIT_BRANCH == "main"`, true},
		{`$CI_COMMIT_BRANCH == 'main'`, true},
		{`${CI_COMMIT_BRANCH} != "main"`, false},
		{`"main" == $CI_COMMIT_BRANCH`, true},
		{`$CI_COMMIT_BRANCH`, true},
		{`$EMPTY`, false},
		{`$UNSET`, false},
		{`$UNSET == null`, true},
		{`$EMPTY == null`, false},
		{`$EMPTY == ""`, true},
		{`$UNSET == ""`, false},
		{`$UNSET != null`, false},
		{`$CI_COMMIT_BRANCH =~ /^ma/`, true},
		{`$CI_COMMIT_BRANCH =~ /^MA/`, false},
		{`$CI_COMMIT_BRANCH =~ /^MA/i`, true},
		{`$CI_COMMIT_BRANCH !~ /^feat/`, true},
		{`$UNSET =~ /x/`, false},
		{`$UNSET !~ /x/`, true},
		{`$CI_COMMIT_BRANCH =~ $PATTERN`, true},
		{`$CI_COMMIT_BRANCH =~ $NOT_A_PATTERN`, false},
		{`$MSG =~ /\[skip tests\]/`, true},
		{`$MSG =~ /tests.*second/`, false},
		{`$MSG =~ /tests.*second/m`, true},
		{`$A_PATH =~ /a\/b/`, false},
		{`$CI_COMMIT_BRANCH == "x" || $CI_PIPELINE_SOURCE == "push"`, true},
		{`$CI_COMMIT_BRANCH == "x" || $CI_PIPELINE_SOURCE == "push" && $UNSET`, false},
		{`($CI_COMMIT_BRANCH == "x" || $CI_PIPELINE_SOURCE == "push") && $CI_COMMIT_BRANCH`, true},
		{`$CI_COMMIT_BRANCH == "main" && ($UNSET || $EMPTY)`, false},
		{`(($CI_COMMIT_BRANCH))`, true},
		{`"" || null`, false},
		{`"x"`, true},
	}
	for _, tt := range tests {
		e, err := Parse(tt.expr)
		if err != nil {
			t.Errorf("Parse(%q): %v", tt.expr, err)
			continue
		}
		if got := e.Eval(lookup); got != tt.want {
			t.Errorf("%s = %v, want %v", tt.expr, got, tt.want)
		}
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		expr, want string
	}{
		{`$A == `, "at character 7: expected a variable"},
		{`$A = "x"`, "at character 4: unexpected"},
		{`main == $A`, `a variable is written $main`},
		{`($A == "x"`, `expected ")"`},
		{`$A == "x`, "at character 7: the string is not closed"},
		{`$A =~ /(/`, "invalid pattern"},
		{`$A =~ /x/q`, "unknown pattern flag"},
		{`$A =~ "x"`, "must be a pattern"},
		{`$A == /x/`, "use =~"},
		{`/x/`, "a pattern alone"},
		{`$`, "followed by a variable name"},
		{`$A $B`, "unexpected variable $B"},
		{`$A && || $B`, "got operator"},
	}
	for _, tt := range tests {
		_, err := Parse(tt.expr)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Parse(%q) error = %v, want one containing %q", tt.expr, err, tt.want)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{`$A == "x" && ($B =~ /y/i || $C)`, `$A != null`, `(`, `/\/`, `${A}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e, err := Parse(s)
		if err != nil {
			return
		}
		e.Eval(func(string) (string, bool) { return "/x/", true })
	})
}
