package pipeline

import (
	"fmt"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/berthci/berth/host/rules"
	"github.com/berthci/berth/host/script"
	"github.com/berthci/berth/sdk"
	"gopkg.in/yaml.v3"
)

// partial is a set of keywords (default:, the old top-level globals)
// parsed into a Job, with where each was set.
type partial struct {
	job Job
	set map[string]*yaml.Node
}

// pipeline parses the whole file.
func (l *loader) pipeline(data []byte) *Pipeline {
	l.files = append(l.files, l.file)
	root := l.root(l.file, data, false)
	if root == nil {
		return nil
	}
	if _, ok := l.entries(root, "the pipeline"); !ok && root.Kind != yaml.MappingNode {
		return nil
	}
	root = l.withIncludes(root, 0, map[string]bool{path.Base(filepath.ToSlash(l.file)): true})
	top := pairs(root)
	p := &Pipeline{}
	var stagesAt, variablesAt, defaultAt, workflowAt *yaml.Node
	var globals, defs []entry
	for _, e := range top {
		switch e.name {
		case "stages":
			stagesAt = e.value
		case "variables":
			variablesAt = e.value
		case "default":
			defaultAt = e.value
		case "workflow":
			workflowAt = e.value
		case "include":
		case "image", "before_script", "after_script", "services", "cache":
			globals = append(globals, e)
		default:
			if reservedTopLevel(e.name) {
				l.warnf(e.key, "%s is not supported by berth exec yet and is ignored: %s", e.name, unsupportedTopLevel()[e.name])
				continue
			}
			defs = append(defs, e)
		}
	}
	extended := l.extendAll(defs)
	all := map[string]*yaml.Node{}
	for _, e := range top {
		all[e.name] = e.value
	}
	for name, n := range extended {
		all[name] = n
	}
	deref := func(n *yaml.Node) *yaml.Node {
		if n == nil {
			return nil
		}
		return l.dereference(n, all, 0)
	}
	if variablesAt != nil {
		p.Variables = l.variables(deref(variablesAt), "variables")
	}
	defaults := l.defaults(deref(defaultAt), globals, deref)
	p.Stages = l.stages(deref(stagesAt))
	if workflowAt != nil {
		p.Workflow = l.workflow(deref(workflowAt))
	}
	leftOut := map[string]bool{}
	for _, e := range defs {
		if strings.HasPrefix(e.name, ".") {
			continue // a hidden job: a template
		}
		j := l.job(e, deref(extended[e.name]), defaults, p)
		if j == nil {
			leftOut[e.name] = true
			continue
		}
		p.Jobs = append(p.Jobs, l.instances(j)...)
	}
	if len(p.Jobs) == 0 && len(l.errs) == 0 {
		l.errorf(root, "the pipeline has no jobs: add at least one job whose name does not start with \".\"")
	}
	l.checkNeeds(p, leftOut)
	return p
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
	var items []*yaml.Node
	flattenNodes(n, &items, 0)
	for _, item := range items {
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

// flattenNodes appends the items of list n to out, those of nested lists
// (from !reference) in place.
func flattenNodes(n *yaml.Node, out *[]*yaml.Node, depth int) {
	for _, item := range n.Content {
		if item.Kind == yaml.SequenceNode && item.Tag != "!reference" && depth < maxScriptDepth {
			flattenNodes(item, out, depth+1)
			continue
		}
		*out = append(*out, item)
	}
}

// defaults parses default: and the old top-level globals into what every
// job inherits: default: wins over the globals, which are then reported.
func (l *loader) defaults(n *yaml.Node, globals []entry, deref func(*yaml.Node) *yaml.Node) *partial {
	d := &partial{set: map[string]*yaml.Node{}}
	if n != nil && !isNull(n) {
		entries, _ := l.entries(n, "default")
		for _, e := range entries {
			if handled, set := l.shared(&d.job, e, "default"); handled {
				if set {
					d.set[e.name] = e.key
				}
				continue
			}
			if slices.Contains(defaultKeywords(), e.name) {
				l.warnf(e.key, "default: %s is not supported by berth exec yet and is ignored", e.name)
				continue
			}
			l.warnf(e.key, "default: unknown keyword %q is ignored%s", e.name, didYouMean(e.name, defaultKeywords()))
		}
	}
	for _, e := range globals {
		e.value = deref(e.value)
		if at, ok := d.set[e.name]; ok {
			l.warnf(e.key, "top-level %s is ignored: default: %s (line %d) is used instead", e.name, e.name, at.Line)
			continue
		}
		if _, set := l.shared(&d.job, e, ""); set {
			d.set[e.name] = e.key
		}
	}
	return d
}

// inherit copies the keyword name from d into j.
func inherit(j *Job, d *Job, name string) {
	switch name {
	case "before_script":
		j.BeforeScript = d.BeforeScript
	case "after_script":
		j.AfterScript = d.AfterScript
	case "image":
		j.Image = d.Image
	case "services":
		j.Services = d.Services
	case "timeout":
		j.Timeout = d.Timeout
	case "tags":
		j.Tags = d.Tags
	case "cache":
		j.Caches = d.Caches
	case "artifacts":
		j.Artifacts = d.Artifacts
	case "retry":
		j.Retry = d.Retry
	case "interruptible":
		j.Interruptible = d.Interruptible
	}
}

// shared parses e into j if it is one of the keywords default: and jobs
// share, and reports whether it was and whether it set a value (an empty
// value sets nothing).
func (l *loader) shared(j *Job, e entry, ctx string) (handled, set bool) {
	what := e.name
	if ctx != "" {
		what = ctx + ": " + e.name
	}
	switch e.name {
	case "before_script", "after_script", "image", "timeout", "tags", "services", "cache", "artifacts", "retry", "interruptible":
	case "hooks", "id_tokens":
		l.warnf(e.key, "%s is not supported by berth exec yet and is ignored", what)
		return true, false
	default:
		return false, false
	}
	if isNull(e.value) {
		return true, false
	}
	ok := false
	switch e.name {
	case "before_script":
		j.BeforeScript, ok = l.commands(e.value, what)
	case "after_script":
		j.AfterScript, ok = l.commands(e.value, what)
	case "image":
		j.Image, ok = l.image(e.value, what)
	case "timeout":
		j.Timeout, ok = l.timeout(e.value, what)
	case "tags":
		j.Tags, ok = l.textList(e.value, what)
	case "services":
		j.Services, ok = l.services(e.value, what)
	case "cache":
		j.Caches, ok = l.caches(e.value, what)
	case "artifacts":
		j.Artifacts, ok = l.artifacts(e.value, what)
	case "retry":
		j.Retry, ok = l.retry(e.value, what)
	case "interruptible":
		j.Interruptible, ok = l.boolean(e.value, what)
	}
	return true, ok
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

// job parses one job (extends and !reference already applied); it returns
// nil for a job berth leaves out.
func (l *loader) job(e entry, n *yaml.Node, d *partial, p *Pipeline) *Job {
	ctx := jobContext(e.name)
	entries, ok := l.entries(n, ctx)
	if !ok && entries == nil {
		return nil
	}
	j := &Job{Name: e.name, Base: e.name, File: l.nodeFile(e.key), Line: e.key.Line, Stage: "test", When: "on_success"}
	own := map[string]bool{}
	var scriptAt, stage, allowFailure, onlyAt *yaml.Node
	var rulesAt *yaml.Node
	var leftOut, stageOK = false, true
	inheritDefault, inheritVars := true, true
	var defaultList, varList []string
	for _, kw := range entries {
		what := ctx + ": " + kw.name
		if handled, set := l.shared(j, kw, ctx); handled {
			if set || !isNull(kw.value) {
				own[kw.name] = true
			}
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
		case "start_in":
			if !isNull(kw.value) {
				j.StartIn, _ = l.text(kw.value, what)
			}
		case "needs":
			j.HasNeeds = !isNull(kw.value)
			j.Needs = l.needs(kw.value, what)
		case "dependencies":
			j.HasDependencies = !isNull(kw.value)
			if j.HasDependencies {
				j.Dependencies, _ = l.textList(kw.value, what)
			}
		case "rules":
			if !isNull(kw.value) {
				rulesAt = kw.key
				j.Rules = l.rules(kw.value, what, false)
			}
		case "only", "except":
			if isNull(kw.value) {
				break
			}
			onlyAt = kw.key
			f := l.filter(kw.value, what)
			if kw.name == "only" {
				j.Only = f
			} else {
				j.Except = f
			}
		case "parallel":
			if !isNull(kw.value) {
				l.parallel(j, kw.value, what)
			}
		case "coverage":
			if !isNull(kw.value) {
				j.Coverage = l.coverage(kw.value, what)
			}
		case "resource_group":
			if !isNull(kw.value) {
				j.ResourceGroup, _ = l.text(kw.value, what)
			}
		case "inherit":
			inheritDefault, defaultList, inheritVars, varList = l.inherit(kw.value, what)
		case "environment":
			if isNull(kw.value) {
				break
			}
			env := kw.value
			if env.Kind == yaml.MappingNode {
				env = lookup(env, "name")
			}
			if env != nil && env.Kind == yaml.ScalarNode {
				j.Environment = env.Value
			}
			l.warnf(kw.key, "%s: environment is not supported by berth exec yet and is ignored: %s", ctx, unsupportedJobKeywords()["environment"])
		case "manual_confirmation":
		default:
			if note, known := unsupportedJobKeywords()[kw.name]; known {
				l.warnf(kw.key, "%s: %s is not supported by berth exec yet and is ignored: %s", ctx, kw.name, note)
				if kw.name == "trigger" || kw.name == "run" {
					leftOut = true
				}
				continue
			}
			l.warnf(kw.key, "%s: unknown keyword %q is ignored%s", ctx, kw.name, didYouMean(kw.name, jobKeywords()))
		}
	}
	if leftOut {
		return nil
	}
	if scriptAt == nil {
		hint := ""
		for _, kw := range entries {
			if suggest(kw.name, jobKeywords()) == "script" && kw.name != "script" {
				hint = fmt.Sprintf("; is %q (line %d) a misspelled script?", kw.name, kw.key.Line)
			}
		}
		l.errorf(e.key, "%s: script is required%s", ctx, hint)
	}
	if stageOK && !slices.Contains(p.Stages, j.Stage) {
		at := stage
		if at == nil {
			at = e.key
		}
		l.errorf(at, "%s: stage %q is not in stages (%s)", ctx, j.Stage, strings.Join(p.Stages, ", "))
	}
	if rulesAt != nil && onlyAt != nil {
		l.errorf(rulesAt, "%s: rules cannot be used together with only or except (line %d)", ctx, onlyAt.Line)
	}
	j.AllowFailureSet = allowFailure != nil
	if allowFailure == nil && j.When == "manual" {
		j.AllowFailure = true // GitLab's default for manual jobs
	}
	for name := range d.set {
		if own[name] || !inheritDefault || defaultList != nil && !slices.Contains(defaultList, name) {
			continue
		}
		inherit(j, &d.job, name)
	}
	if inheritVars {
		for _, v := range p.Variables {
			if varList == nil || slices.Contains(varList, v.Key) {
				j.GlobalVariables = append(j.GlobalVariables, v)
			}
		}
	}
	return j
}

func didYouMean(word string, known []string) string {
	if s := suggest(word, known); s != "" {
		return fmt.Sprintf(" (did you mean %s?)", s)
	}
	return ""
}

// inherit parses inherit: {default: bool | [keywords], variables: bool |
// [names]}. A nil list means everything.
func (l *loader) inherit(n *yaml.Node, what string) (def bool, defList []string, vars bool, varList []string) {
	def, vars = true, true
	if isNull(n) {
		return
	}
	entries, _ := l.entries(n, what)
	for _, e := range entries {
		w := what + ": " + e.name
		var b bool
		var list []string
		if e.value.Kind == yaml.SequenceNode {
			b = true
			list, _ = l.textList(e.value, w)
			if list == nil {
				list = []string{}
			}
		} else {
			b, _ = l.boolean(e.value, w)
		}
		switch e.name {
		case "default":
			def, defList = b, list
			for _, k := range list {
				if !slices.Contains(defaultKeywords(), k) {
					l.errorf(e.value, "%s: %q is not a keyword of default:%s", w, k, didYouMean(k, defaultKeywords()))
				}
			}
		case "variables":
			vars, varList = b, list
		default:
			l.warnf(e.key, "%s: unknown key %q is ignored (use default or variables)", what, e.name)
		}
	}
	return
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
	j.AllowFailure = true
	j.AllowFailureExitCodes = l.exitCodes(codes, what+": exit_codes")
}

// exitCodes parses a number or a list of numbers.
func (l *loader) exitCodes(codes *yaml.Node, what string) []int {
	if codes = l.resolve(codes, what); codes == nil {
		return nil
	}
	items := []*yaml.Node{codes}
	if codes.Kind == yaml.SequenceNode {
		items = codes.Content
		if len(items) == 0 {
			l.errorf(codes, "%s: the list is empty", what)
		}
	}
	var out []int
	for _, item := range items {
		if code, ok := l.integer(item, what); ok {
			out = append(out, code)
		}
	}
	return out
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

// services parses services: a list of image names or mappings with name,
// alias, entrypoint, command, variables and pull_policy.
func (l *loader) services(n *yaml.Node, what string) ([]sdk.Service, bool) {
	if n.Kind != yaml.SequenceNode {
		l.errorf(n, "%s: expected a list, got %s", what, describe(n))
		return nil, false
	}
	var items []*yaml.Node
	flattenNodes(n, &items, 0)
	out := []sdk.Service{}
	ok := true
	for _, item := range items {
		var svc sdk.Service
		if item.Kind != yaml.MappingNode {
			img, good := l.image(item, what)
			ok = ok && good
			svc.Image = img
			out = append(out, svc)
			continue
		}
		entries, _ := l.entries(item, what)
		imageKeys := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Line: item.Line, Column: item.Column}
		l.fileOf[imageKeys] = l.nodeFile(item)
		for _, e := range entries {
			w := what + ": " + e.name
			switch e.name {
			case "name", "entrypoint", "pull_policy", "docker", "kubernetes":
				imageKeys.Content = append(imageKeys.Content, e.key, e.value)
			case "alias":
				if s, good := l.text(e.value, w); good {
					for _, a := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' }) {
						svc.Aliases = append(svc.Aliases, a)
					}
				}
			case "command":
				svc.Command, _ = l.textList(e.value, w)
			case "variables":
				vars := l.variables(e.value, w)
				if len(vars) > 0 {
					svc.Variables = map[string]string{}
				}
				for _, v := range vars {
					svc.Variables[v.Key] = v.Value
				}
			default:
				l.warnf(e.key, "%s: unknown key %q is ignored%s", what, e.name, didYouMean(e.name, []string{"name", "alias", "entrypoint", "command", "variables", "pull_policy"}))
			}
		}
		img, good := l.image(imageKeys, what)
		ok = ok && good
		svc.Image = img
		out = append(out, svc)
	}
	return out, ok
}

// whenOf parses a when: value among allowed.
func (l *loader) whenOf(n *yaml.Node, what string, allowed []string) string {
	w, ok := l.text(n, what)
	if !ok {
		return ""
	}
	if !slices.Contains(allowed, w) {
		l.errorf(n, "%s: %q is not one of %s", what, w, strings.Join(allowed, ", "))
		return ""
	}
	return w
}

// artifacts parses artifacts:.
func (l *loader) artifacts(n *yaml.Node, what string) (*Artifacts, bool) {
	entries, ok := l.entries(n, what)
	if !ok && entries == nil {
		return nil, false
	}
	a := &Artifacts{When: "on_success"}
	for _, e := range entries {
		w := what + ": " + e.name
		if isNull(e.value) {
			continue
		}
		switch e.name {
		case "paths":
			a.Paths, _ = l.textList(e.value, w)
		case "exclude":
			a.Exclude, _ = l.textList(e.value, w)
		case "untracked":
			a.Untracked, _ = l.boolean(e.value, w)
		case "when":
			a.When = l.whenOf(e.value, w, []string{"on_success", "on_failure", "always"})
		case "name":
			a.Name, _ = l.text(e.value, w)
		case "expire_in":
			a.ExpireIn, _ = l.text(e.value, w)
		case "reports":
			reports, _ := l.entries(e.value, w)
			for _, r := range reports {
				if r.name == "dotenv" {
					if r.value.Kind == yaml.SequenceNode {
						a.Dotenv, _ = l.textList(r.value, w+": dotenv")
					} else if s, good := l.text(r.value, w+": dotenv"); good {
						a.Dotenv = []string{s}
					}
				}
			}
		case "expose_as", "public", "access":
		default:
			l.warnf(e.key, "%s: unknown key %q is ignored%s", what, e.name, didYouMean(e.name, []string{"paths", "exclude", "untracked", "when", "name", "expire_in", "reports", "expose_as", "public", "access"}))
		}
	}
	return a, true
}

// caches parses cache: one mapping or a list of them.
func (l *loader) caches(n *yaml.Node, what string) ([]Cache, bool) {
	items := []*yaml.Node{n}
	if n.Kind == yaml.SequenceNode {
		items = nil
		flattenNodes(n, &items, 0)
	}
	if len(items) > 4 {
		l.errorf(n, "%s: at most 4 caches are allowed, got %d", what, len(items))
		return nil, false
	}
	out := []Cache{}
	for _, item := range items {
		entries, ok := l.entries(item, what)
		if !ok && entries == nil {
			return nil, false
		}
		c := Cache{Key: "default", Policy: "pull-push", When: "on_success"}
		for _, e := range entries {
			w := what + ": " + e.name
			if isNull(e.value) {
				continue
			}
			switch e.name {
			case "key":
				if e.value.Kind == yaml.MappingNode {
					keys, _ := l.entries(e.value, w)
					for _, k := range keys {
						switch k.name {
						case "files":
							c.KeyFiles, _ = l.textList(k.value, w+": files")
							if len(c.KeyFiles) > 2 {
								l.errorf(k.value, "%s: files: at most 2 files are allowed", w)
							}
						case "prefix":
							c.KeyPrefix, _ = l.text(k.value, w+": prefix")
						default:
							l.errorf(k.key, "%s: unknown key %q (use files and prefix)", w, k.name)
						}
					}
					if len(c.KeyFiles) == 0 {
						l.errorf(e.value, "%s: files is required", w)
					}
				} else {
					c.Key, _ = l.text(e.value, w)
				}
			case "paths":
				c.Paths, _ = l.textList(e.value, w)
			case "untracked":
				c.Untracked, _ = l.boolean(e.value, w)
			case "policy":
				c.Policy, _ = l.text(e.value, w)
				if !strings.Contains(c.Policy, "$") && !slices.Contains([]string{"pull", "push", "pull-push"}, c.Policy) {
					l.errorf(e.value, "%s: %q is not one of pull, push, pull-push", w, c.Policy)
				}
			case "when":
				c.When = l.whenOf(e.value, w, []string{"on_success", "on_failure", "always"})
			case "fallback_keys":
				c.FallbackKeys, _ = l.textList(e.value, w)
			case "unprotect":
			default:
				l.warnf(e.key, "%s: unknown key %q is ignored%s", what, e.name, didYouMean(e.name, []string{"key", "paths", "untracked", "policy", "when", "fallback_keys", "unprotect"}))
			}
		}
		out = append(out, c)
	}
	return out, true
}

// retryWhen are the failures retry:when may name.
func retryWhen() []string {
	return []string{"always", "unknown_failure", "script_failure", "api_failure", "stuck_or_timeout_failure",
		"runner_system_failure", "runner_unsupported", "stale_schedule", "job_execution_timeout",
		"archived_failure", "unmet_prerequisites", "scheduler_failure", "data_integrity_failure"}
}

// retry parses retry: a number (0 to 2) or {max, when, exit_codes}.
func (l *loader) retry(n *yaml.Node, what string) (Retry, bool) {
	var r Retry
	maxAt := n
	if n.Kind == yaml.MappingNode {
		entries, _ := l.entries(n, what)
		maxAt = nil
		for _, e := range entries {
			w := what + ": " + e.name
			switch e.name {
			case "max":
				maxAt = e.value
			case "when":
				items := []*yaml.Node{e.value}
				if e.value.Kind == yaml.SequenceNode {
					items = e.value.Content
				}
				for _, item := range items {
					if s := l.whenOf(item, w, retryWhen()); s != "" {
						r.When = append(r.When, s)
					}
				}
			case "exit_codes":
				r.ExitCodes = l.exitCodes(e.value, w)
			default:
				l.errorf(e.key, "%s: unknown key %q (use max, when and exit_codes)", what, e.name)
			}
		}
		if maxAt == nil {
			r.Max = 0
			return r, true
		}
		what += ": max"
	}
	m, ok := l.integer(maxAt, what)
	if ok && (m < 0 || m > 2) {
		l.errorf(maxAt, "%s: %d is not between 0 and 2", what, m)
		ok = false
	}
	r.Max = m
	return r, ok
}

// needs parses needs: a list of job names or mappings with job, artifacts,
// optional and parallel:matrix.
func (l *loader) needs(n *yaml.Node, what string) []Need {
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		l.errorf(n, "%s: expected a list, got %s", what, describe(n))
		return nil
	}
	var items []*yaml.Node
	flattenNodes(n, &items, 0)
	out := []Need{}
	for _, item := range items {
		need := Need{Artifacts: true, File: l.nodeFile(item), Line: item.Line, Column: item.Column}
		if item.Kind != yaml.MappingNode {
			s, ok := l.text(item, what)
			if !ok {
				continue
			}
			need.Job = s
			out = append(out, need)
			continue
		}
		entries, _ := l.entries(item, what)
		skip := false
		for _, e := range entries {
			w := what + ": " + e.name
			switch e.name {
			case "job":
				need.Job, _ = l.text(e.value, w)
			case "artifacts":
				need.Artifacts, _ = l.boolean(e.value, w)
			case "optional":
				need.Optional, _ = l.boolean(e.value, w)
			case "parallel":
				m := lookup(e.value, "matrix")
				if m == nil || m.Kind != yaml.SequenceNode {
					l.errorf(e.value, "%s: expected matrix: with a list of variable values", w)
					continue
				}
				for _, me := range m.Content {
					vals := map[string]string{}
					for _, kv := range pairs(me) {
						if kv.value.Kind == yaml.SequenceNode && len(kv.value.Content) == 1 {
							kv.value = kv.value.Content[0]
						}
						if s, ok := l.text(kv.value, w+": matrix: "+kv.name); ok {
							vals[kv.name] = s
						}
					}
					need.Matrix = append(need.Matrix, vals)
				}
			case "pipeline", "project", "ref":
				skip = true
				if e.name != "ref" {
					l.warnf(e.key, "%s: needs from other pipelines or projects are not supported by berth exec yet and are ignored", what)
				}
			default:
				l.errorf(e.key, "%s: unknown key %q (use job, artifacts, optional and parallel)", what, e.name)
			}
		}
		if skip {
			continue
		}
		if need.Job == "" {
			l.errorf(item, "%s: job is required", what)
			continue
		}
		out = append(out, need)
	}
	return out
}

// rules parses rules: (or workflow:rules, where when is always or never).
func (l *loader) rules(n *yaml.Node, what string, workflow bool) []Rule {
	if n.Kind != yaml.SequenceNode {
		l.errorf(n, "%s: expected a list of rules, got %s", what, describe(n))
		return nil
	}
	var items []*yaml.Node
	flattenNodes(n, &items, 0)
	out := []Rule{}
	whens := []string{"on_success", "on_failure", "always", "manual", "delayed", "never"}
	if workflow {
		whens = []string{"always", "never"}
	}
	for _, item := range items {
		entries, ok := l.entries(item, what)
		if !ok && entries == nil {
			continue
		}
		r := Rule{File: l.nodeFile(item), Line: item.Line}
		for _, e := range entries {
			w := what + ": " + e.name
			if isNull(e.value) {
				continue
			}
			switch e.name {
			case "if":
				if s, ok := l.text(e.value, w); ok {
					if _, err := rules.Parse(s); err != nil {
						l.errorf(e.value, "%s: %v", w, err)
					}
					r.If = s
				}
			case "changes":
				r.Changes, r.CompareTo = l.pathsOrMap(e.value, w, "compare_to")
			case "exists":
				r.Exists, _ = l.pathsOrMap(e.value, w, "")
			case "when":
				r.When = l.whenOf(e.value, w, whens)
			case "allow_failure":
				b, _ := l.boolean(e.value, w)
				r.AllowFailure = &b
			case "variables":
				r.Variables = l.variables(e.value, w)
			case "start_in":
				r.StartIn, _ = l.text(e.value, w)
			case "needs", "interruptible", "auto_cancel":
				l.warnf(e.key, "%s: %s in rules is not supported by berth exec yet and is ignored", what, e.name)
			default:
				l.errorf(e.key, "%s: unknown key %q%s", what, e.name, didYouMean(e.name, []string{"if", "changes", "exists", "when", "allow_failure", "variables", "start_in", "needs"}))
			}
		}
		out = append(out, r)
	}
	return out
}

// pathsOrMap parses a list of paths or {paths: […], extra: x}.
func (l *loader) pathsOrMap(n *yaml.Node, what, extra string) ([]string, string) {
	if n.Kind != yaml.MappingNode {
		list, _ := l.textList(n, what)
		return list, ""
	}
	var paths []string
	var x string
	entries, _ := l.entries(n, what)
	for _, e := range entries {
		switch {
		case e.name == "paths":
			paths, _ = l.textList(e.value, what+": paths")
		case e.name == extra && extra != "":
			x, _ = l.text(e.value, what+": "+e.name)
		case e.name == "project" || e.name == "ref":
			l.warnf(e.key, "%s: %s is not supported by berth exec yet and is ignored: the paths are looked for in this project", what, e.name)
		default:
			l.errorf(e.key, "%s: unknown key %q", what, e.name)
		}
	}
	return paths, x
}

// filter parses only: or except:.
func (l *loader) filter(n *yaml.Node, what string) *Filter {
	f := &Filter{}
	if n.Kind != yaml.MappingNode {
		if n.Kind == yaml.SequenceNode {
			f.Refs, _ = l.textList(n, what)
		} else if s, ok := l.text(n, what); ok {
			f.Refs = []string{s}
		}
		l.checkRefs(n, f.Refs, what)
		return f
	}
	entries, _ := l.entries(n, what)
	for _, e := range entries {
		w := what + ": " + e.name
		switch e.name {
		case "refs":
			f.Refs, _ = l.textList(e.value, w)
			l.checkRefs(e.value, f.Refs, w)
		case "variables":
			f.Variables, _ = l.textList(e.value, w)
			for i, v := range f.Variables {
				if _, err := rules.Parse(v); err != nil {
					at := e.value
					if i < len(e.value.Content) {
						at = e.value.Content[i]
					}
					l.errorf(at, "%s: %v", w, err)
				}
			}
		case "changes":
			f.Changes, _ = l.pathsOrMap(e.value, w, "")
		case "kubernetes":
			l.warnf(e.key, "%s: kubernetes is not supported by berth exec yet and is ignored", what)
		default:
			l.errorf(e.key, "%s: unknown key %q (use refs, variables, changes)", what, e.name)
		}
	}
	return f
}

func (l *loader) checkRefs(n *yaml.Node, refs []string, what string) {
	for _, r := range refs {
		if len(r) > 1 && strings.HasPrefix(r, "/") && strings.LastIndexByte(r, '/') > 0 {
			if _, err := rules.Parse("$X =~ " + r); err != nil {
				l.errorf(n, "%s: %q is not a valid pattern: %v", what, r, err)
			}
		}
	}
}

// coverage parses coverage: a pattern between slashes.
func (l *loader) coverage(n *yaml.Node, what string) string {
	s, ok := l.text(n, what)
	if !ok {
		return ""
	}
	if len(s) < 2 || s[0] != '/' || s[len(s)-1] != '/' {
		l.errorf(n, "%s: expected a pattern between slashes, such as /Coverage: (\\d+\\.\\d+)%%/, got %q", what, s)
		return ""
	}
	pat := s[1 : len(s)-1]
	if _, err := regexp.Compile(pat); err != nil {
		l.errorf(n, "%s: invalid pattern: %v", what, err)
		return ""
	}
	return pat
}

// workflow parses workflow: (name and rules).
func (l *loader) workflow(n *yaml.Node) *Workflow {
	w := &Workflow{}
	if isNull(n) {
		return w
	}
	entries, _ := l.entries(n, "workflow")
	for _, e := range entries {
		switch e.name {
		case "name":
			w.Name, _ = l.text(e.value, "workflow: name")
		case "rules":
			if !isNull(e.value) {
				w.Rules = l.rules(e.value, "workflow: rules", true)
			}
		case "auto_cancel":
		default:
			l.warnf(e.key, "workflow: unknown key %q is ignored", e.name)
		}
	}
	return w
}
