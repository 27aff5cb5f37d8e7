package pipeline

import (
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"

	"github.com/berthci/berth/host/glob"
	"gopkg.in/yaml.v3"
)

// Limits GitLab has too (or, for aliases, that keep a file from expanding
// beyond what a machine can hold).
const (
	maxIncludes      = 150
	maxIncludeDepth  = 100
	maxExtendsDepth  = 11
	maxReferenceNest = 10
	maxNodes         = 1 << 20
)

// root parses one file and returns the mapping at the top of its YAML
// document, with aliases and merge keys (<<) resolved. what names the file
// in the message for an empty file.
func (l *loader) root(file string, data []byte, included bool) *yaml.Node {
	before := len(l.errs)
	all := l.documents(file, data)
	if len(l.errs) > before {
		return nil
	}
	var docs []*yaml.Node // the documents that are not empty
	for _, d := range all {
		if len(d.Content) > 0 && !isNull(d.Content[0]) {
			docs = append(docs, d.Content[0])
		}
	}
	if len(docs) == 0 {
		if included {
			l.errorAt(file, 1, 1, "the included file is empty")
		} else {
			l.errorAt(file, 1, 1, "the file is empty: a pipeline needs at least one job")
		}
		return nil
	}
	l.mark(docs[0], file)
	if len(docs) > 1 && isSpecHeader(docs[0]) {
		l.warnf(docs[0], "spec: headers are not supported by berth exec yet and are ignored: inputs are not applied")
		docs = docs[1:]
	}
	l.mark(docs[0], file)
	if len(docs) > 1 {
		l.mark(docs[1], file)
		l.errorf(docs[1], "a second YAML document (after ---) is only allowed after a spec: header")
		return nil
	}
	x := &expander{l: l, memo: map[*yaml.Node]*yaml.Node{}, active: map[*yaml.Node]bool{}, sizes: map[*yaml.Node]int{}}
	n := x.expand(docs[0])
	if x.failed {
		return nil
	}
	if x.size(n) > maxNodes {
		l.errorf(docs[0], "the YAML aliases of this file expand to more than %d values", maxNodes)
		return nil
	}
	return n
}

// mark records file as the file of n and everything below it.
func (l *loader) mark(n *yaml.Node, file string) {
	if _, done := l.fileOf[n]; done {
		return
	}
	l.fileOf[n] = file
	for _, c := range n.Content {
		l.mark(c, file)
	}
	if n.Alias != nil {
		l.mark(n.Alias, file)
	}
}

// isSpecHeader reports whether n is GitLab's header document (spec:
// inputs) that comes before the pipeline, separated by ---.
func isSpecHeader(n *yaml.Node) bool {
	return n.Kind == yaml.MappingNode && len(n.Content) == 2 && n.Content[0].Value == "spec"
}

// expander replaces aliases by what they stand for and applies merge keys.
// Subtrees without either are kept as they are (same nodes).
type expander struct {
	l      *loader
	memo   map[*yaml.Node]*yaml.Node
	active map[*yaml.Node]bool
	sizes  map[*yaml.Node]int
	failed bool
}

func (x *expander) expand(n *yaml.Node) *yaml.Node {
	if r, ok := x.memo[n]; ok {
		return r
	}
	if x.active[n] {
		x.l.errorf(n, "the YAML alias refers to a value that contains it")
		x.failed = true
		return n
	}
	x.active[n] = true
	defer delete(x.active, n)
	var out *yaml.Node
	switch n.Kind {
	case yaml.AliasNode:
		if n.Alias == nil {
			x.l.errorf(n, "unknown YAML anchor %q", n.Value)
			x.failed = true
			return n
		}
		out = x.expand(n.Alias)
	case yaml.MappingNode:
		out = x.mapping(n)
	case yaml.SequenceNode, yaml.DocumentNode:
		out = n
		for i, c := range n.Content {
			e := x.expand(c)
			if e != c {
				if out == n {
					out = clone(n)
				}
				out.Content[i] = e
			}
		}
	default:
		out = n
	}
	x.memo[n] = out
	return out
}

func clone(n *yaml.Node) *yaml.Node {
	c := *n
	c.Content = slices.Clone(n.Content)
	return &c
}

func isMergeKey(k *yaml.Node) bool {
	return k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge"
}

func (x *expander) mapping(n *yaml.Node) *yaml.Node {
	explicit := map[string]bool{}
	hasMerge := false
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := n.Content[i]; isMergeKey(k) {
			hasMerge = true
		} else if k.Kind == yaml.ScalarNode {
			explicit[k.Value] = true
		}
	}
	out := n
	if hasMerge {
		out = clone(n)
		out.Content = nil
		x.l.fileOf[out] = x.l.nodeFile(n)
	}
	added := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if isMergeKey(k) {
			src := x.expand(v)
			var sources []*yaml.Node
			switch src.Kind {
			case yaml.MappingNode:
				sources = []*yaml.Node{src}
			case yaml.SequenceNode:
				sources = src.Content
			}
			if len(sources) == 0 && src.Kind != yaml.SequenceNode {
				x.l.errorf(v, "a YAML merge key (<<) takes a mapping or a list of mappings, got %s", describe(src))
				x.failed = true
				continue
			}
			for _, s := range sources {
				if s.Kind != yaml.MappingNode {
					x.l.errorf(s, "a YAML merge key (<<) takes a mapping or a list of mappings, got %s in the list", describe(s))
					x.failed = true
					continue
				}
				for j := 0; j+1 < len(s.Content); j += 2 {
					sk := s.Content[j]
					if explicit[sk.Value] || added[sk.Value] {
						continue
					}
					added[sk.Value] = true
					out.Content = append(out.Content, sk, s.Content[j+1])
				}
			}
			continue
		}
		ek, ev := x.expand(k), x.expand(v)
		if hasMerge {
			out.Content = append(out.Content, ek, ev)
			continue
		}
		if ek != k || ev != v {
			if out == n {
				out = clone(n)
			}
			out.Content[i], out.Content[i+1] = ek, ev
		}
	}
	return out
}

// size is the number of nodes n stands for when every shared subtree is
// counted each time it appears (at most maxNodes+1).
func (x *expander) size(n *yaml.Node) int {
	if s, ok := x.sizes[n]; ok {
		return s
	}
	x.sizes[n] = maxNodes + 1 // a cycle counts as too big
	s := 1
	for _, c := range n.Content {
		s += x.size(c)
		if s > maxNodes {
			s = maxNodes + 1
			break
		}
	}
	x.sizes[n] = s
	return s
}

// pairs returns the keys and values of mapping n without reporting
// anything: the last of duplicate keys wins, keys that are not names are
// left out.
func pairs(n *yaml.Node) []entry {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	var out []entry
	index := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode || k.ShortTag() == "!!null" {
			continue
		}
		if at, dup := index[k.Value]; dup {
			out[at].key, out[at].value = k, v
			continue
		}
		index[k.Value] = len(out)
		out = append(out, entry{name: k.Value, key: k, value: v})
	}
	return out
}

// lookup returns the value of key in mapping n, or nil.
func lookup(n *yaml.Node, key string) *yaml.Node {
	for _, e := range pairs(n) {
		if e.name == key {
			return e.value
		}
	}
	return nil
}

// without returns mapping n without key (n itself if it has no such key).
func (l *loader) without(n *yaml.Node, key string) *yaml.Node {
	if lookup(n, key) == nil {
		return n
	}
	out := clone(n)
	out.Content = nil
	l.fileOf[out] = l.nodeFile(n)
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Kind == yaml.ScalarNode && n.Content[i].Value == key {
			continue
		}
		out.Content = append(out.Content, n.Content[i], n.Content[i+1])
	}
	return out
}

// merge merges b into a as GitLab merges includes and extends: mappings
// are merged key by key (deeply), anything else in b replaces what a has.
func (l *loader) merge(a, b *yaml.Node) *yaml.Node {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	case a.Kind != yaml.MappingNode || b.Kind != yaml.MappingNode || a.Tag == "!reference" || b.Tag == "!reference":
		return b
	}
	out := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Line: b.Line, Column: b.Column}
	l.fileOf[out] = l.nodeFile(b)
	index := map[string]int{}
	for _, e := range pairs(a) {
		index[e.name] = len(out.Content)
		out.Content = append(out.Content, e.key, e.value)
	}
	for _, e := range pairs(b) {
		if at, ok := index[e.name]; ok {
			out.Content[at] = e.key
			out.Content[at+1] = l.merge(out.Content[at+1], e.value)
			continue
		}
		index[e.name] = len(out.Content)
		out.Content = append(out.Content, e.key, e.value)
	}
	return out
}

// withIncludes returns root with the files it includes merged below it.
func (l *loader) withIncludes(root *yaml.Node, depth int, seen map[string]bool) *yaml.Node {
	inc := lookup(root, "include")
	if inc == nil {
		return root
	}
	var acc *yaml.Node
	for _, spec := range l.includeSpecs(inc) {
		names := l.localFiles(spec)
		for _, name := range names {
			if seen[name] {
				l.warnf(spec.at, "include: %s is already included; it is read once", name)
				continue
			}
			seen[name] = true
			if len(l.files) > maxIncludes {
				l.errorf(spec.at, "include: more than %d files are included", maxIncludes)
				return root
			}
			if depth >= maxIncludeDepth {
				l.errorf(spec.at, "include: files include each other more than %d levels deep", maxIncludeDepth)
				return root
			}
			data, err := fs.ReadFile(l.project, name)
			if err != nil {
				l.errorf(spec.at, "include: cannot read local file %s: %v", name, unwrapPath(err))
				continue
			}
			l.files = append(l.files, name)
			r := l.root(name, data, true)
			if r == nil {
				continue
			}
			if r.Kind != yaml.MappingNode {
				l.errorf(r, "the included file must be a mapping, got %s", describe(r))
				continue
			}
			acc = l.merge(acc, l.withIncludes(r, depth+1, seen))
		}
	}
	return l.merge(acc, l.without(root, "include"))
}

func unwrapPath(err error) error {
	if pe, ok := err.(*fs.PathError); ok {
		return pe.Err
	}
	return err
}

// includeSpec is one local file (or pattern) to include.
type includeSpec struct {
	local string
	at    *yaml.Node
}

// includeSpecs reads include: (a path, a mapping, or a list of them) and
// warns about the kinds of include berth does not support.
func (l *loader) includeSpecs(n *yaml.Node) []includeSpec {
	items := []*yaml.Node{n}
	if n.Kind == yaml.SequenceNode {
		items = n.Content
	}
	var out []includeSpec
	for _, item := range items {
		switch {
		case item.Kind == yaml.ScalarNode && !isNull(item):
			if strings.Contains(item.Value, "://") {
				l.warnf(item, "include: remote files are not supported by berth exec yet and are ignored: the jobs of %s are missing", item.Value)
				continue
			}
			out = append(out, includeSpec{local: item.Value, at: item})
		case item.Kind == yaml.MappingNode:
			entries, _ := l.entries(item, "include")
			var local *yaml.Node
			for _, e := range entries {
				switch e.name {
				case "local":
					local = e.value
				case "file", "project", "ref":
					if e.name == "project" {
						l.warnf(e.key, "include: project files are not supported by berth exec yet and are ignored: their jobs are missing")
					}
				case "remote", "template", "component":
					l.warnf(e.key, "include: %s is not supported by berth exec yet and is ignored: its jobs are missing", e.name)
				case "rules":
					l.warnf(e.key, "include: rules are not evaluated by berth exec yet: the file is always included")
				case "inputs":
					l.warnf(e.key, "include: inputs are not supported by berth exec yet and are ignored")
				case "integrity", "cache":
				default:
					l.warnf(e.key, "include: unknown key %q is ignored%s", e.name, didYouMean(e.name, []string{"local", "file", "project", "remote", "template", "component", "rules", "inputs"}))
				}
			}
			if local != nil {
				if s, ok := l.text(local, "include: local"); ok {
					out = append(out, includeSpec{local: s, at: local})
				}
			}
		default:
			l.errorf(item, "include: expected a file name or a mapping, got %s", describe(item))
		}
	}
	return out
}

// localFiles returns the files of the project that spec names, sorted when
// it is a pattern.
func (l *loader) localFiles(spec includeSpec) []string {
	if l.project == nil {
		l.errorf(spec.at, "include: %s cannot be read: no project folder was given to read included files from", spec.local)
		return nil
	}
	name := path.Clean(strings.TrimPrefix(spec.local, "/"))
	if !fs.ValidPath(name) || name == "." {
		l.errorf(spec.at, "include: %q is not a file inside the project", spec.local)
		return nil
	}
	if !glob.HasMeta(name) {
		return []string{name}
	}
	var found []string
	base := glob.Base(name)
	err := fs.WalkDir(l.project, base, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() {
			if p != base && (d.Name() == ".git" || !glob.MatchPrefix(name, p)) {
				return fs.SkipDir
			}
			return nil
		}
		if glob.Match(name, p) {
			found = append(found, p)
		}
		return nil
	})
	if err != nil || len(found) == 0 {
		l.errorf(spec.at, "include: no file of the project matches %s", spec.local)
	}
	return found
}

// extendAll resolves extends: for every top-level entry that is a job or
// a template, and returns them by name.
func (l *loader) extendAll(defs []entry) map[string]*yaml.Node {
	byName := map[string]entry{}
	for _, e := range defs {
		byName[e.name] = e
	}
	memo := map[string]*yaml.Node{}
	for _, e := range defs {
		l.extended(e.name, byName, memo, nil)
	}
	return memo
}

func jobContext(name string) string { return fmt.Sprintf("job %q", name) }

func (l *loader) extended(name string, defs map[string]entry, memo map[string]*yaml.Node, stack []string) *yaml.Node {
	if n, ok := memo[name]; ok {
		return n
	}
	e := defs[name]
	n := e.value
	memo[name] = n // also what a cycle sees
	if n.Kind != yaml.MappingNode {
		return n
	}
	ctx := jobContext(name)
	if !strings.HasPrefix(name, ".") {
		l.entries(n, ctx) // reports duplicate keys once; templates are not checked
	}
	ext := lookup(n, "extends")
	if ext == nil || isNull(ext) {
		return n
	}
	stack = append(stack, name)
	what := ctx + ": extends"
	var parents []string
	if ext.Kind == yaml.SequenceNode {
		parents, _ = l.textList(ext, what)
	} else if s, ok := l.text(ext, what); ok {
		parents = []string{s}
	}
	if len(stack) > maxExtendsDepth {
		l.errorf(ext, "%s: extends are nested more than %d levels deep (%s)", what, maxExtendsDepth, strings.Join(stack, " → "))
		return n
	}
	var acc *yaml.Node
	for _, p := range parents {
		if slices.Contains(stack, p) {
			l.errorf(ext, "%s: circular extends: %s → %s", what, strings.Join(stack, " → "), p)
			continue
		}
		pe, ok := defs[p]
		if !ok {
			names := make([]string, 0, len(defs))
			for k := range defs {
				names = append(names, k)
			}
			slices.Sort(names)
			l.errorf(ext, "%s: there is no job or template named %q%s", what, p, didYouMean(p, names))
			continue
		}
		pn := l.extended(p, defs, memo, stack)
		if pn.Kind != yaml.MappingNode {
			l.errorf(ext, "%s: %q (line %d) is not a mapping", what, p, pe.key.Line)
			continue
		}
		acc = l.merge(acc, pn)
	}
	out := l.merge(acc, l.without(n, "extends"))
	memo[name] = out
	return out
}

// dereference replaces the !reference tags in n by what they point at in
// top (the top-level keys, jobs already extended).
func (l *loader) dereference(n *yaml.Node, top map[string]*yaml.Node, depth int) *yaml.Node {
	if n.Tag == "!reference" {
		return l.reference(n, top, depth)
	}
	out := n
	for i, c := range n.Content {
		d := l.dereference(c, top, depth)
		if d != c {
			if out == n {
				out = clone(n)
				l.fileOf[out] = l.nodeFile(n)
			}
			out.Content[i] = d
		}
	}
	return out
}

func (l *loader) reference(n *yaml.Node, top map[string]*yaml.Node, depth int) *yaml.Node {
	if n.Kind != yaml.SequenceNode || len(n.Content) == 0 {
		l.errorf(n, "!reference takes a list of keys, such as [.template, script]")
		return n
	}
	keys := make([]string, 0, len(n.Content))
	for _, k := range n.Content {
		if k.Kind != yaml.ScalarNode || isNull(k) {
			l.errorf(k, "!reference: expected a key, got %s", describe(k))
			return n
		}
		keys = append(keys, k.Value)
	}
	label := "!reference [" + strings.Join(keys, ", ") + "]"
	if depth >= maxReferenceNest {
		l.errorf(n, "%s: references are nested more than %d levels deep (or refer to each other)", label, maxReferenceNest)
		return n
	}
	cur, ok := top[keys[0]]
	if !ok {
		l.errorf(n, "%s: there is no top-level key %q", label, keys[0])
		return n
	}
	for i, k := range keys[1:] {
		next := lookup(cur, k)
		if next == nil {
			l.errorf(n, "%s: %s has no key %q", label, strings.Join(keys[:i+1], "."), k)
			return n
		}
		cur = next
	}
	return l.dereference(cur, top, depth+1)
}
