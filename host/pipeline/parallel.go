package pipeline

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/berthci/berth/host/script"
	"gopkg.in/yaml.v3"
)

// maxParallel is GitLab's limit on a job's instances.
const maxParallel = 200

// matrixVar is one variable of a parallel: matrix entry and its values.
type matrixVar struct {
	name   string
	values []string
}

// parallelSpec is what parallel: asks for; the loader keeps it apart from
// Job until the job is expanded.
type parallelSpec struct {
	count  int
	matrix [][]matrixVar
}

// parallel parses parallel: N (2 to 200) or parallel: matrix: [...].
func (l *loader) parallel(j *Job, n *yaml.Node, what string) {
	if n.Kind != yaml.MappingNode {
		c, ok := l.integer(n, what)
		if ok && (c < 1 || c > maxParallel) {
			l.errorf(n, "%s: %d is not between 1 and %d", what, c, maxParallel)
			return
		}
		if ok && c > 1 {
			l.specs()[j] = parallelSpec{count: c}
		}
		return
	}
	entries, _ := l.entries(n, what)
	var m *yaml.Node
	for _, e := range entries {
		if e.name != "matrix" {
			l.errorf(e.key, "%s: unknown key %q (use matrix)", what, e.name)
			continue
		}
		m = e.value
	}
	if m == nil {
		return
	}
	what += ": matrix"
	if m.Kind != yaml.SequenceNode || len(m.Content) == 0 {
		l.errorf(m, "%s: expected a list of variable values, got %s", what, describe(m))
		return
	}
	spec := parallelSpec{}
	total := 0
	for _, item := range m.Content {
		entries, ok := l.entries(item, what)
		if !ok {
			continue
		}
		var vars []matrixVar
		product := 1
		for _, e := range entries {
			values := []*yaml.Node{e.value}
			if e.value.Kind == yaml.SequenceNode {
				values = e.value.Content
			}
			mv := matrixVar{name: e.name}
			for _, v := range values {
				if s, ok := l.text(v, what+": "+e.name); ok {
					mv.values = append(mv.values, s)
				}
			}
			if len(mv.values) == 0 {
				l.errorf(e.value, "%s: %s has no values", what, e.name)
				continue
			}
			product *= len(mv.values)
			if product > maxParallel {
				break
			}
			vars = append(vars, mv)
		}
		total += product
		spec.matrix = append(spec.matrix, vars)
	}
	if total > maxParallel {
		l.errorf(m, "%s: it makes %d jobs; at most %d are allowed", what, total, maxParallel)
		return
	}
	l.specs()[j] = spec
}

func (l *loader) specs() map[*Job]parallelSpec {
	if l.parallels == nil {
		l.parallels = map[*Job]parallelSpec{}
	}
	return l.parallels
}

// instances returns the jobs j stands for: itself, or its parallel
// instances.
func (l *loader) instances(j *Job) []*Job {
	spec, ok := l.specs()[j]
	if !ok {
		return []*Job{j}
	}
	var out []*Job
	if spec.count > 0 {
		for i := 1; i <= spec.count; i++ {
			c := *j
			c.Name = fmt.Sprintf("%s %d/%d", j.Name, i, spec.count)
			c.Index, c.Total = i, spec.count
			out = append(out, &c)
		}
	} else {
		for _, entry := range spec.matrix {
			for _, combo := range combinations(entry) {
				c := *j
				c.Matrix = map[string]string{}
				values := make([]string, len(combo))
				for i, v := range combo {
					c.Matrix[entry[i].name] = v
					values[i] = v
				}
				c.Name = j.Name + ": [" + strings.Join(values, ", ") + "]"
				out = append(out, &c)
			}
		}
		for i, c := range out {
			c.Index, c.Total = i+1, len(out)
		}
	}
	for _, c := range out {
		vars := slices.Clone(c.Variables)
		vars = append(vars,
			script.Variable{Key: "CI_NODE_INDEX", Value: strconv.Itoa(c.Index), Raw: true},
			script.Variable{Key: "CI_NODE_TOTAL", Value: strconv.Itoa(c.Total), Raw: true})
		if c.Matrix != nil {
			for _, entry := range spec.matrix {
				for _, mv := range entry {
					if v, ok := c.Matrix[mv.name]; ok && !hasKey(vars, mv.name, v) {
						vars = append(vars, script.Variable{Key: mv.name, Value: v, Raw: true})
					}
				}
			}
		}
		c.Variables = vars
	}
	return out
}

func hasKey(vars []script.Variable, key, value string) bool {
	for _, v := range vars {
		if v.Key == key && v.Value == value && v.Raw {
			return true
		}
	}
	return false
}

// combinations returns every choice of one value per variable, the last
// variable changing fastest.
func combinations(vars []matrixVar) [][]string {
	out := [][]string{{}}
	for _, v := range vars {
		var next [][]string
		for _, prefix := range out {
			for _, value := range v.values {
				next = append(next, append(slices.Clone(prefix), value))
			}
		}
		out = next
	}
	return out
}

// matches reports whether instance j has the values of filter.
func matches(j *Job, filter map[string]string) bool {
	for k, v := range filter {
		if j.Matrix[k] != v {
			return false
		}
	}
	return true
}

// NeedInstances returns the jobs a need stands for in p.
func (p *Pipeline) NeedInstances(n Need) []*Job {
	var out []*Job
	for _, j := range p.Instances(n.Job) {
		if len(n.Matrix) == 0 {
			out = append(out, j)
			continue
		}
		for _, f := range n.Matrix {
			if matches(j, f) {
				out = append(out, j)
				break
			}
		}
	}
	return out
}

// checkNeeds checks that needs and dependencies name jobs of the pipeline
// in the same or an earlier stage.
func (l *loader) checkNeeds(p *Pipeline, leftOut map[string]bool) {
	stageIndex := func(s string) int { return slices.Index(p.Stages, s) }
	reported := map[string]bool{}
	for _, j := range p.Jobs {
		ctx := jobContext(j.Base)
		kept := j.Needs[:0:0]
		for _, n := range j.Needs {
			key := j.Base + "\x00needs\x00" + n.Job
			found := p.NeedInstances(n)
			switch {
			case len(found) == 0 && (n.Optional || leftOut[n.Job]):
				continue
			case len(found) == 0 && !reported[key]:
				reported[key] = true
				l.errorAt(n.File, n.Line, n.Column, "%s: needs: there is no job named %q%s", ctx, n.Job, didYouMean(n.Job, jobNames(p)))
				continue
			case len(found) == 0:
				continue
			}
			if stageIndex(found[0].Stage) > stageIndex(j.Stage) && !reported[key] {
				reported[key] = true
				l.errorAt(n.File, n.Line, n.Column, "%s: needs: %q is in stage %s, which comes after the job's stage %s", ctx, n.Job, found[0].Stage, j.Stage)
			}
			kept = append(kept, n)
		}
		j.Needs = kept
		for _, d := range j.Dependencies {
			key := j.Base + "\x00deps\x00" + d
			found := p.Instances(d)
			if len(found) == 0 && !leftOut[d] && !reported[key] {
				reported[key] = true
				l.errorAt(j.File, j.Line, 1, "%s: dependencies: there is no job named %q%s", ctx, d, didYouMean(d, jobNames(p)))
				continue
			}
			if len(found) > 0 && stageIndex(found[0].Stage) > stageIndex(j.Stage) && !reported[key] {
				reported[key] = true
				l.errorAt(j.File, j.Line, 1, "%s: dependencies: %q is in stage %s, which comes after the job's stage %s", ctx, d, found[0].Stage, j.Stage)
			}
		}
	}
}

func jobNames(p *Pipeline) []string {
	var names []string
	for _, j := range p.Jobs {
		if !slices.Contains(names, j.Base) {
			names = append(names, j.Base)
		}
	}
	return names
}
