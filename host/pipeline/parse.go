package pipeline

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/berthci/berth/host/script"
	"github.com/berthci/berth/sdk"
	"gopkg.in/yaml.v3"
)

// setting is a value from the file and where it was set; at is nil when
// the file does not set it.
type setting[T any] struct {
	value T
	at    *yaml.Node
}

// settings are the keywords default: and jobs share.
type settings struct {
	beforeScript setting[[]string]
	afterScript  setting[[]string]
	image        setting[sdk.Image]
	timeout      setting[time.Duration]
	tags         setting[[]string]
}

// pipeline parses the whole file.
func (l *loader) pipeline(data []byte) *Pipeline {
	root := l.root(data)
	if root == nil {
		return nil
	}
	top, _ := l.entries(root, "the pipeline")
	p := &Pipeline{}
	var stages *yaml.Node
	var defaults, globals settings
	var jobs []entry
	for _, e := range top {
		switch e.name {
		case "stages":
			stages = e.value
		case "variables":
			p.Variables = l.variables(e.value, "variables")
		case "default":
			defaults = l.defaults(e.value)
		case "image", "before_script", "after_script":
			l.setting(&globals, e, e.name)
		default:
			switch {
			case reservedTopLevel(e.name):
				l.warnf(e.key, "%s is not supported by berth exec yet and is ignored: %s", e.name, unsupportedTopLevel()[e.name])
			case strings.HasPrefix(e.name, "."): // a hidden job: a template
			default:
				jobs = append(jobs, e)
			}
		}
	}
	p.Stages = l.stages(stages)
	base := l.inherit(defaults, globals)
	for _, e := range jobs {
		if j := l.job(e, base, p.Stages); j != nil {
			p.Jobs = append(p.Jobs, j)
		}
	}
	if len(p.Jobs) == 0 && len(l.errs) == 0 {
		l.errorf(root, "the pipeline has no jobs: add at least one job whose name does not start with \".\"")
	}
	return p
}

// root returns the mapping at the top of the pipeline's YAML document.
func (l *loader) root(data []byte) *yaml.Node {
	all := l.documents(data)
	if len(l.errs) > 0 {
		return nil
	}
	var docs []*yaml.Node // the documents that are not empty
	for _, d := range all {
		if len(d.Content) > 0 && !isNull(d.Content[0]) {
			docs = append(docs, d.Content[0])
		}
	}
	if len(docs) == 0 {
		l.errorAt(1, 1, "the file is empty: a pipeline needs at least one job")
		return nil
	}
	if len(docs) > 1 && isSpecHeader(docs[0]) {
		l.warnf(docs[0], "spec: headers are not supported by berth exec yet and are ignored: inputs are not applied")
		docs = docs[1:]
	}
	if len(docs) > 1 {
		l.errorf(docs[1], "a second YAML document (after ---) is only allowed after a spec: header")
		return nil
	}
	return docs[0]
}

// isSpecHeader reports whether n is GitLab's header document (spec:
// inputs) that comes before the pipeline, separated by ---.
func isSpecHeader(n *yaml.Node) bool {
	return n.Kind == yaml.MappingNode && len(n.Content) == 2 && n.Content[0].Value == "spec"
}

// stages returns the stages of the pipeline, with .pre first and .post last
// wherever the file lists them.
func (l *loader) stages(n *yaml.Node) []string {
	if n == nil || isNull(n) {
		return defaultStages()
	}
	if n = l.resolve(n, "stages"); n == nil {
		return defaultStages()
	}
	if n.Kind != yaml.SequenceNode {
		l.errorf(n, "stages: expected a list of stage names, got %s", describe(n))
		return defaultStages()
	}
	out := []string{".pre"}
	seen := make(map[string]bool)
	for _, item := range n.Content {
		name, ok := l.text(item, "stages")
		switch {
		case !ok:
		case name == "":
			l.errorf(item, "stages: a stage name must not be empty")
		case name == ".pre" || name == ".post":
		case seen[name]:
			l.warnf(item, "stages: %q is listed twice; the first place counts", name)
		default:
			seen[name] = true
			out = append(out, name)
		}
	}
	return append(out, ".post")
}

// defaults parses default:.
func (l *loader) defaults(n *yaml.Node) settings {
	var s settings
	if isNull(n) {
		return s
	}
	entries, _ := l.entries(n, "default")
	for _, e := range entries {
		if l.setting(&s, e, "default: "+e.name) {
			continue
		}
		if slices.Contains(defaultKeywords(), e.name) {
			l.warnf(e.key, "default: %s is not supported by berth exec yet and is ignored", e.name)
			continue
		}
		l.warnf(e.key, "default: unknown keyword %q is ignored%s", e.name, didYouMean(e.name, defaultKeywords()))
	}
	return s
}

// inherit returns what every job inherits: default: wins over the old
// top-level globals, which are then reported as ignored.
func (l *loader) inherit(defaults, globals settings) settings {
	both := func(name string, d, g *yaml.Node) {
		if d != nil && g != nil {
			l.warnf(g, "top-level %s is ignored: default: %s (line %d) is used instead", name, name, d.Line)
		}
	}
	both("before_script", defaults.beforeScript.at, globals.beforeScript.at)
	both("after_script", defaults.afterScript.at, globals.afterScript.at)
	both("image", defaults.image.at, globals.image.at)
	s := defaults
	s.beforeScript = orElse(defaults.beforeScript, globals.beforeScript)
	s.afterScript = orElse(defaults.afterScript, globals.afterScript)
	s.image = orElse(defaults.image, globals.image)
	return s
}

// orElse returns a if the file sets it, else b.
func orElse[T any](a, b setting[T]) setting[T] {
	if a.at != nil {
		return a
	}
	return b
}

// setting parses e into s if it is one of the keywords default: and jobs
// share, and reports whether it was. An empty value leaves s as it was.
func (l *loader) setting(s *settings, e entry, what string) bool {
	switch e.name {
	case "before_script", "after_script", "image", "timeout", "tags":
	default:
		return false
	}
	if isNull(e.value) {
		return true
	}
	switch e.name {
	case "before_script":
		if v, ok := l.commands(e.value, what); ok {
			s.beforeScript = setting[[]string]{v, e.key}
		}
	case "after_script":
		if v, ok := l.commands(e.value, what); ok {
			s.afterScript = setting[[]string]{v, e.key}
		}
	case "image":
		if v, ok := l.image(e.value, what); ok {
			s.image = setting[sdk.Image]{v, e.key}
		}
	case "timeout":
		if v, ok := l.timeout(e.value, what); ok {
			s.timeout = setting[time.Duration]{v, e.key}
		}
	case "tags":
		if v, ok := l.textList(e.value, what); ok {
			s.tags = setting[[]string]{v, e.key}
		}
	}
	return true
}

func (l *loader) timeout(n *yaml.Node, what string) (time.Duration, bool) {
	text, ok := l.text(n, what)
	if !ok {
		return 0, false
	}
	d, err := ParseDuration(text)
	if err != nil {
		l.errorf(n, "%s: %v", what, err)
		return 0, false
	}
	if d <= 0 {
		l.errorf(n, "%s: %q is not longer than zero", what, text)
		return 0, false
	}
	return d, true
}

// job parses one job; it returns nil for a job berth leaves out.
func (l *loader) job(e entry, base settings, stages []string) *Job {
	ctx := fmt.Sprintf("job %q", e.name)
	entries, ok := l.entries(e.value, ctx)
	if !ok && entries == nil {
		return nil
	}
	j := &Job{Name: e.name, Line: e.key.Line, Stage: "test", When: "on_success"}
	var own settings
	var scriptAt, stage, allowFailure *yaml.Node
	var leftOut, stageOK = false, true
	var hints []string // why a script may be missing
	for _, kw := range entries {
		what := ctx + ": " + kw.name
		if l.setting(&own, kw, what) {
			continue
		}
		switch kw.name {
		case "script":
			scriptAt = kw.key
			if isNull(kw.value) {
				l.errorf(kw.key, "%s: script is empty", ctx)
				break
			}
			if cmds, ok := l.commands(kw.value, what); ok {
				if len(cmds) == 0 {
					l.errorf(kw.value, "%s: the list is empty", what)
				}
				j.Script = cmds
			}
		case "stage":
			if !isNull(kw.value) {
				stage = kw.value
				j.Stage, stageOK = l.text(kw.value, what)
			}
		case "variables":
			j.Variables = l.variables(kw.value, what)
		case "allow_failure":
			if !isNull(kw.value) {
				allowFailure = kw.value
				l.allowFailure(j, kw.value, what)
			}
		case "when":
			if isNull(kw.value) {
				break
			}
			if when, ok := l.text(kw.value, what); ok {
				if !slices.Contains(whenValues(), when) {
					l.errorf(kw.value, "%s: %q is not one of %s", what, when, strings.Join(whenValues(), ", "))
				}
				j.When = when
			}
		default:
			if note, known := unsupportedJobKeywords()[kw.name]; known {
				l.warnf(kw.key, "%s: %s is not supported by berth exec yet and is ignored: %s", ctx, kw.name, note)
				switch kw.name {
				case "trigger", "run":
					leftOut = true
				case "extends":
					hints = append(hints, fmt.Sprintf("extends (line %d) is not supported yet, so no script comes from the jobs it extends", kw.key.Line))
				}
				continue
			}
			l.warnf(kw.key, "%s: unknown keyword %q is ignored%s", ctx, kw.name, didYouMean(kw.name, jobKeywords()))
			if suggest(kw.name, jobKeywords()) == "script" {
				hints = append(hints, fmt.Sprintf("is %q (line %d) a misspelled script?", kw.name, kw.key.Line))
			}
		}
	}
	if leftOut {
		return nil
	}
	if scriptAt == nil {
		hint := ""
		if len(hints) > 0 {
			hint = "; " + strings.Join(hints, "; ")
		}
		l.errorf(e.key, "%s: script is required%s", ctx, hint)
	}
	if stageOK && !slices.Contains(stages, j.Stage) {
		at := stage
		if at == nil {
			at = e.key
		}
		l.errorf(at, "%s: stage %q is not in stages (%s)", ctx, j.Stage, strings.Join(stages, ", "))
	}
	if allowFailure == nil && j.When == "manual" {
		j.AllowFailure = true // GitLab's default for manual jobs
	}
	j.BeforeScript = orElse(own.beforeScript, base.beforeScript).value
	j.AfterScript = orElse(own.afterScript, base.afterScript).value
	j.Image = orElse(own.image, base.image).value
	j.Timeout = orElse(own.timeout, base.timeout).value
	j.Tags = orElse(own.tags, base.tags).value
	return j
}

func didYouMean(word string, known []string) string {
	if s := suggest(word, known); s != "" {
		return fmt.Sprintf(" (did you mean %s?)", s)
	}
	return ""
}

// allowFailure parses allow_failure: true/false or {exit_codes: N | [N, …]}.
func (l *loader) allowFailure(j *Job, n *yaml.Node, what string) {
	if n = l.resolve(n, what); n == nil {
		return
	}
	if n.Kind != yaml.MappingNode {
		j.AllowFailure, _ = l.boolean(n, what)
		return
	}
	entries, _ := l.entries(n, what)
	var codes *yaml.Node
	for _, e := range entries {
		if e.name != "exit_codes" {
			l.errorf(e.key, "%s: unknown key %q: the only key allowed is exit_codes", what, e.name)
			continue
		}
		codes = e.value
	}
	if codes == nil {
		if len(entries) == 0 {
			l.errorf(n, "%s: expected exit_codes", what)
		}
		return
	}
	what += ": exit_codes"
	if codes = l.resolve(codes, what); codes == nil {
		return
	}
	items := []*yaml.Node{codes}
	if codes.Kind == yaml.SequenceNode {
		items = codes.Content
		if len(items) == 0 {
			l.errorf(codes, "%s: the list is empty", what)
		}
	}
	for _, item := range items {
		if code, ok := l.integer(item, what); ok {
			j.AllowFailureExitCodes = append(j.AllowFailureExitCodes, code)
		}
	}
}

// variables parses a variables: mapping. A value is a string, number or
// boolean (kept as written; booleans as true or false), or a mapping with
// value, description, expand and options.
func (l *loader) variables(n *yaml.Node, what string) []script.Variable {
	if isNull(n) {
		return nil
	}
	entries, _ := l.entries(n, what)
	vars := make([]script.Variable, 0, len(entries))
	for _, e := range entries {
		v := script.Variable{Key: e.name}
		if e.name == "" {
			l.errorf(e.key, "%s: a variable name must not be empty", what)
			continue
		}
		value := l.resolve(e.value, what+": "+e.name)
		switch {
		case value == nil:
			continue
		case value.Kind == yaml.MappingNode:
			if !l.variableSpec(&v, value, what+": "+e.name) {
				continue
			}
		case isNull(value):
		default:
			s, ok := l.text(value, what+": "+e.name)
			if !ok {
				continue
			}
			if value.ShortTag() == "!!bool" {
				s = strings.ToLower(s)
			}
			v.Value = s
		}
		vars = append(vars, v)
	}
	return vars
}

// variableSpec parses the mapping form of a variable.
func (l *loader) variableSpec(v *script.Variable, n *yaml.Node, what string) bool {
	entries, ok := l.entries(n, what)
	known := []string{"value", "description", "expand", "options"}
	for _, e := range entries {
		if isNull(e.value) {
			continue
		}
		switch e.name {
		case "value":
			s, good := l.text(e.value, what+": value")
			if e.value.ShortTag() == "!!bool" {
				s = strings.ToLower(s)
			}
			v.Value, ok = s, ok && good
		case "description":
			_, good := l.text(e.value, what+": description")
			ok = ok && good
		case "expand":
			expand, good := l.boolean(e.value, what+": expand")
			v.Raw, ok = !expand, ok && good
		case "options":
			_, good := l.textList(e.value, what+": options")
			ok = ok && good
		default:
			l.warnf(e.key, "%s: unknown key %q is ignored%s", what, e.name, didYouMean(e.name, known))
		}
	}
	return ok
}

// image parses an image: a name, or a mapping with name, entrypoint and
// pull_policy.
func (l *loader) image(n *yaml.Node, what string) (sdk.Image, bool) {
	if n = l.resolve(n, what); n == nil {
		return sdk.Image{}, false
	}
	var img sdk.Image
	if n.Kind != yaml.MappingNode {
		name, ok := l.text(n, what)
		if ok && name == "" {
			l.errorf(n, "%s: the image name is empty", what)
			ok = false
		}
		img.Name = name
		return img, ok
	}
	entries, ok := l.entries(n, what)
	known := []string{"name", "entrypoint", "pull_policy", "docker", "kubernetes"}
	var name *yaml.Node
	for _, e := range entries {
		switch e.name {
		case "name":
			name = e.value
			s, good := l.text(e.value, what+": name")
			img.Name, ok = s, ok && good
		case "entrypoint":
			if isNull(e.value) {
				break
			}
			s, good := l.textList(e.value, what+": entrypoint")
			img.Entrypoint, ok = s, ok && good
		case "pull_policy":
			if isNull(e.value) {
				break
			}
			policies, good := l.pullPolicy(e.value, what+": pull_policy")
			img.PullPolicy, ok = policies, ok && good
		case "docker", "kubernetes":
			l.warnf(e.key, "%s: %s is not supported by berth exec yet and is ignored", what, e.name)
		default:
			l.warnf(e.key, "%s: unknown key %q is ignored%s", what, e.name, didYouMean(e.name, known))
		}
	}
	if name == nil {
		l.errorf(n, "%s: name is required", what)
		return img, false
	}
	if img.Name == "" && ok {
		l.errorf(name, "%s: the image name is empty", what)
		ok = false
	}
	return img, ok
}

// pullPolicy parses pull_policy: a policy or a list of them.
func (l *loader) pullPolicy(n *yaml.Node, what string) ([]string, bool) {
	if n = l.resolve(n, what); n == nil {
		return nil, false
	}
	items := []*yaml.Node{n}
	if n.Kind == yaml.SequenceNode {
		items = n.Content
	}
	var out []string
	ok := true
	for _, item := range items {
		p, good := l.text(item, what)
		if good && !slices.Contains(pullPolicies(), p) {
			l.errorf(item, "%s: %q is not one of %s", what, p, strings.Join(pullPolicies(), ", "))
			good = false
		}
		ok = ok && good
		out = append(out, p)
	}
	return out, ok
}
