package localrun

import (
	"bufio"
	"fmt"
	"io"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/berthci/berth/host/script"
)

// runnerVariables are set by the job runner once it knows the build
// directory: references to them are left for the script to expand.
func runnerVariable(name string) bool {
	switch name {
	case "CI_PROJECT_DIR", "CI_JOB_ID", "CI_JOB_NAME", "CI_JOB_STAGE", "CI", "CI_BUILDS_DIR":
		return true
	}
	return false
}

func raw(k, v string) script.Variable { return script.Variable{Key: k, Value: v, Raw: true} }

// Predefined returns the predefined variables of a local pipeline run
// from the repository (g may be nil when there is none).
func Predefined(g *Git, dir string, pipelineID int64, now time.Time) []script.Variable {
	name := filepath.Base(dir)
	vars := []script.Variable{
		raw("CI", "true"),
		raw("GITLAB_CI", "true"),
		raw("CI_SERVER", "yes"),
		raw("BERTH_LOCAL", "true"),
		raw("CI_PIPELINE_SOURCE", "push"),
		raw("CI_PIPELINE_ID", strconv.FormatInt(pipelineID, 10)),
		raw("CI_PIPELINE_IID", strconv.FormatInt(pipelineID%1000000, 10)),
		raw("CI_PIPELINE_CREATED_AT", now.UTC().Format(time.RFC3339)),
		raw("CI_CONFIG_PATH", ".gitlab-ci.yml"),
		raw("CI_PROJECT_NAME", name),
		raw("CI_PROJECT_DIR", dir),
		raw("CI_COMMIT_BEFORE_SHA", strings.Repeat("0", 40)),
		raw("CI_COMMIT_REF_PROTECTED", "false"),
	}
	sha, ref, branch, tag, def := strings.Repeat("0", 40), "main", "main", "", "main"
	projectPath := "local/" + name
	if g != nil {
		sha, branch, tag, def = g.SHA, g.Branch, g.Tag, g.DefaultBranch
		ref = branch
		if ref == "" {
			ref = tag
		}
		if ref == "" {
			ref = sha
		}
		if tag != "" && branch == "" {
			branch = ""
		}
		if g.ProjectPath != "" {
			projectPath = g.ProjectPath
		}
		vars = append(vars,
			raw("CI_COMMIT_TITLE", g.Title),
			raw("CI_COMMIT_MESSAGE", g.Message),
			raw("CI_COMMIT_DESCRIPTION", strings.TrimSpace(strings.TrimPrefix(g.Message, g.Title))),
			raw("CI_COMMIT_AUTHOR", g.Author),
			raw("CI_COMMIT_TIMESTAMP", g.Timestamp.Format(time.RFC3339)),
		)
	}
	ns, _, _ := strings.Cut(projectPath, "/")
	if i := strings.LastIndexByte(projectPath, '/'); i >= 0 {
		ns = projectPath[:i]
	}
	vars = append(vars,
		raw("CI_COMMIT_SHA", sha),
		raw("CI_COMMIT_SHORT_SHA", sha[:min(8, len(sha))]),
		raw("CI_COMMIT_REF_NAME", ref),
		raw("CI_COMMIT_REF_SLUG", Slug(ref)),
		raw("CI_DEFAULT_BRANCH", def),
		raw("CI_PROJECT_PATH", projectPath),
		raw("CI_PROJECT_NAMESPACE", ns),
		raw("CI_PROJECT_PATH_SLUG", Slug(projectPath)),
	)
	if branch != "" {
		vars = append(vars, raw("CI_COMMIT_BRANCH", branch))
	}
	if tag != "" {
		vars = append(vars, raw("CI_COMMIT_TAG", tag))
	}
	return vars
}

var nonSlug = regexp.MustCompile(`[^a-z0-9]+`)

// Slug is GitLab's slug of a ref: lower case, anything but a-z and 0-9
// replaced by -, at most 63 characters, no - at either end.
func Slug(s string) string {
	s = nonSlug.ReplaceAllString(strings.ToLower(s), "-")
	if len(s) > 63 {
		s = s[:63]
	}
	return strings.Trim(s, "-")
}

// ParseAssignment parses KEY=VALUE (as --var takes it).
func ParseAssignment(s string) (script.Variable, error) {
	k, v, ok := strings.Cut(s, "=")
	if !ok || !validName(k) {
		return script.Variable{}, fmt.Errorf("%q is not KEY=VALUE with KEY a variable name", s)
	}
	return script.Variable{Key: k, Value: v}, nil
}

func validName(k string) bool {
	if k == "" {
		return false
	}
	for i, c := range k {
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// ParseEnvFile reads a .env-style file: KEY=VALUE lines, "export " allowed
// before the key, # comments and blank lines skipped, values in single
// quotes taken as they are and in double quotes with \n, \" and \\
// unescaped. name is used in errors, which give the line.
func ParseEnvFile(name string, r io.Reader) ([]script.Variable, error) {
	var vars []script.Variable
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		text = strings.TrimPrefix(text, "export ")
		k, v, ok := strings.Cut(text, "=")
		k = strings.TrimSpace(k)
		if !ok || !validName(k) {
			return nil, fmt.Errorf("%s:%d: expected KEY=VALUE, got %q", name, line, text)
		}
		v = strings.TrimSpace(v)
		switch {
		case len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'':
			v = v[1 : len(v)-1]
		case len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"':
			v = strings.NewReplacer(`\n`, "\n", `\"`, `"`, `\\`, `\`).Replace(v[1 : len(v)-1])
		}
		vars = append(vars, script.Variable{Key: k, Value: v})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	return vars, nil
}

// Dedup returns vars with one variable per key: the last one, in the
// place of the first.
func Dedup(vars []script.Variable) []script.Variable {
	index := map[string]int{}
	var out []script.Variable
	for _, v := range vars {
		if i, ok := index[v.Key]; ok {
			out[i] = v
			continue
		}
		index[v.Key] = len(out)
		out = append(out, v)
	}
	return out
}

// Values returns the value of each variable as a job sees it, references
// between variables expanded as GitLab does: recursively, those whose
// expand is false (Raw) kept as they are, unknown ones as nothing, "$$" as
// "$". vars are in precedence order (later ones win).
func Values(vars []script.Variable) map[string]string {
	x := newExpander(Dedup(vars), false)
	out := map[string]string{}
	for k := range x.vars {
		out[k] = x.literal(k)
	}
	return out
}

// ForScript returns vars (in precedence order) reduced to one per key and
// expanded as Values does, ready for host/script: references to the
// variables the job runner sets itself (CI_PROJECT_DIR, CI_JOB_ID, …) are
// left in place for the script to expand, so expanded values stay
// expandable with any literal "$" doubled; values not to be expanded stay
// Raw. The runner's own variables are left out.
func ForScript(vars []script.Variable) []script.Variable {
	d := Dedup(vars)
	x := newExpander(d, true)
	var out []script.Variable
	for _, v := range d {
		if runnerVariable(v.Key) {
			continue
		}
		if !v.Raw {
			v.Value = x.escaped(v.Key, 0)
		}
		out = append(out, v)
	}
	return out
}

// expander expands variables into an escaped form: "$$" for a literal
// "$", "${NAME}" for a reference left to the script.
type expander struct {
	vars      map[string]script.Variable
	forScript bool
	memo      map[string]string
}

func newExpander(vars []script.Variable, forScript bool) *expander {
	m := map[string]script.Variable{}
	for _, v := range vars {
		m[v.Key] = v
	}
	return &expander{vars: m, forScript: forScript, memo: map[string]string{}}
}

func (x *expander) literal(key string) string {
	return strings.ReplaceAll(x.escaped(key, 0), "$$", "$")
}

func (x *expander) escaped(key string, depth int) string {
	if s, ok := x.memo[key]; ok {
		return s
	}
	v := x.vars[key]
	if v.Raw || depth > 10 {
		return strings.ReplaceAll(v.Value, "$", "$$")
	}
	x.memo[key] = "" // a reference cycle expands to nothing
	s := scanRefs(v.Value, func(name string) string {
		if x.forScript && runnerVariable(name) {
			return "${" + name + "}"
		}
		if _, ok := x.vars[name]; !ok {
			return ""
		}
		return x.escaped(name, depth+1)
	})
	x.memo[key] = s
	return s
}

// scanRefs returns s with each reference ($NAME, ${NAME}) replaced by
// ref(NAME) and each literal "$" doubled, with host/script's rules: "$$"
// is a literal "$", the shell's special parameters and unterminated or
// empty ${ } are nothing, a "$" before anything else is literal.
func scanRefs(s string, ref func(string) string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' {
			b.WriteByte(s[i])
			continue
		}
		if i+1 >= len(s) {
			b.WriteString("$$")
			continue
		}
		c := s[i+1]
		switch {
		case c == '$':
			b.WriteString("$$")
			i++
		case c == '{':
			end := strings.IndexByte(s[i+2:], '}')
			if end < 0 {
				return b.String() // unterminated: the rest vanishes
			}
			name := s[i+2 : i+2+end]
			i += 2 + end
			if name != "" && !special(name) {
				b.WriteString(ref(name))
			}
		case special(string(c)):
			i++
		case isNameByte(c):
			j := i + 1
			for j < len(s) && isNameByte(s[j]) {
				j++
			}
			b.WriteString(ref(s[i+1 : j]))
			i = j - 1
		default:
			b.WriteString("$$")
		}
	}
	return b.String()
}

func special(name string) bool {
	if len(name) != 1 {
		return false
	}
	return strings.ContainsRune("*#@!?-0123456789", rune(name[0]))
}

func isNameByte(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// ExpandWith expands $VAR references in s with the values given (for
// cache keys, resource groups, paths).
func ExpandWith(s string, values map[string]string) string {
	return strings.ReplaceAll(scanRefs(s, func(name string) string {
		return strings.ReplaceAll(values[name], "$", "$$")
	}), "$$", "$")
}
