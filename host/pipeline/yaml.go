package pipeline

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// maxScriptDepth is how deeply GitLab lets script lists nest.
const maxScriptDepth = 10

// loader collects the errors and warnings of one Parse.
type loader struct {
	file    string // the pipeline file
	project fs.FS  // where include: local files are read; nil: none
	files   []string
	// fileOf is the file each node comes from (nodes keep their line and
	// column through includes and merges, not their file).
	fileOf map[*yaml.Node]string
	// warned holds the mappings whose duplicate keys were reported.
	warned map[*yaml.Node]bool
	// parallels are the parallel: specs of the jobs that have one.
	parallels map[*Job]parallelSpec
	errs      []error
	warnings  []Warning
}

func (l *loader) errorAt(file string, line, col int, format string, args ...any) {
	l.errs = append(l.errs, &Error{File: file, Line: max(line, 1), Column: max(col, 1), Message: fmt.Sprintf(format, args...)})
}

func (l *loader) nodeFile(n *yaml.Node) string {
	if f, ok := l.fileOf[n]; ok {
		return f
	}
	return l.file
}

func (l *loader) errorf(n *yaml.Node, format string, args ...any) {
	l.errorAt(l.nodeFile(n), n.Line, n.Column, format, args...)
}

func (l *loader) warnf(n *yaml.Node, format string, args ...any) {
	l.warnings = append(l.warnings, Warning{File: l.nodeFile(n), Line: max(n.Line, 1), Column: max(n.Column, 1), Message: fmt.Sprintf(format, args...)})
}

// documents parses data into its YAML documents. A syntax error is recorded
// with the position where the parser failed.
func (l *loader) documents(file string, data []byte) []*yaml.Node {
	docs, err := decodeAll(data)
	if err == nil {
		return docs
	}
	msg := yamlMessage(err)
	line, col := failurePosition(data, msg)
	l.errorAt(file, line, col, "invalid YAML: %s", msg)
	return nil
}

// decodeAll decodes every document in data. yaml.v3 reports failures by
// panicking internally; a panic that escapes it is turned into an error too.
func decodeAll(data []byte) (docs []*yaml.Node, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("the YAML parser failed: %v", r)
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return docs, err
		}
		docs = append(docs, &doc)
	}
}

// yamlLinePrefix matches the "yaml: line N: " yaml.v3 puts before its
// messages. Its line number is often off (it is the line of the construct
// being parsed, not of the problem), so failurePosition finds a better one.
var yamlLinePrefix = regexp.MustCompile(`^(yaml: )?(line \d+: )?`)

func yamlMessage(err error) string {
	return yamlLinePrefix.ReplaceAllString(err.Error(), "")
}

// failurePosition finds where in data the YAML parser fails with msg: the
// character whose addition to the input first makes the parser fail that
// way. yaml.v3 gives no column and an unreliable line, and the parser reads
// the input as a stream, so the shortest failing prefix ends at the problem.
// It is found by bisection over prefixes of data.
func failurePosition(data []byte, msg string) (line, col int) {
	lo, hi := 0, len(data) // the whole of data fails with msg
	for lo < hi {
		mid := lo + (hi-lo)/2
		if _, err := decodeAll(data[:mid]); err != nil && yamlMessage(err) == msg {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	if hi == 0 {
		return 1, 1
	}
	last := hi - 1 // the byte that completed the failure
	if strings.HasPrefix(msg, "unknown anchor") {
		// The alias is complete at its last character; point at its *.
		if star := bytes.LastIndexByte(data[:hi], '*'); star >= 0 {
			last, hi = star, star+1
		}
	}
	lineStart := bytes.LastIndexByte(data[:last], '\n') + 1
	return bytes.Count(data[:lineStart], []byte("\n")) + 1, utf8.RuneCount(data[lineStart:hi])
}

// entry is a key and its value in a mapping.
type entry struct {
	name       string
	key, value *yaml.Node
}

// entries returns the keys and values of mapping n, in file order. what
// names the mapping in messages. A key given twice keeps its first place
// and its last value, as GitLab reads YAML, with a warning.
func (l *loader) entries(n *yaml.Node, what string) ([]entry, bool) {
	if n = l.resolve(n, what); n == nil {
		return nil, false
	}
	if n.Kind != yaml.MappingNode {
		l.errorf(n, "%s: expected a mapping, got %s", what, describe(n))
		return nil, false
	}
	var out []entry
	index := make(map[string]int)
	ok := true
	report := !l.warned[n]
	l.warned[n] = true
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, value := n.Content[i], n.Content[i+1]
		if key.Kind != yaml.ScalarNode || key.ShortTag() == "!!null" {
			if report {
				l.errorf(key, "%s: a key must be a plain name, got %s", what, describe(key))
			}
			ok = false
			continue
		}
		if first, dup := index[key.Value]; dup {
			if report {
				l.warnf(key, "%s: %q is given twice (first at line %d); the last one is used", what, key.Value, out[first].key.Line)
			}
			out[first].key, out[first].value = key, value
			continue
		}
		index[key.Value] = len(out)
		out = append(out, entry{name: key.Value, key: key, value: value})
	}
	return out, ok
}

// resolve returns the node n stands for. Aliases and !reference tags are
// replaced before jobs are read; one still here is where one may not be.
func (l *loader) resolve(n *yaml.Node, what string) *yaml.Node {
	switch {
	case n.Kind == yaml.AliasNode:
		l.errorf(n, "%s: the YAML alias *%s cannot be used here", what, n.Value)
		return nil
	case n.Tag == "!reference":
		l.errorf(n, "%s: a !reference tag cannot be used here", what)
		return nil
	}
	return n
}

// isNull reports whether n is an empty value (nothing, ~ or null).
func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describe names the kind of value n is, for messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return "an empty value"
		case "!!bool":
			return "a boolean (" + n.Value + ")"
		case "!!int", "!!float":
			return "a number (" + n.Value + ")"
		case "!!str", "!!timestamp":
			return strconv.Quote(n.Value)
		}
		return "a value tagged " + n.ShortTag()
	}
	return "an unknown kind of value"
}

// text returns the text of scalar n. Numbers, booleans and dates count as
// text as written (a script line "- true" is the command true); empty values
// and other kinds do not.
func (l *loader) text(n *yaml.Node, what string) (string, bool) {
	if n = l.resolve(n, what); n == nil {
		return "", false
	}
	if n.Kind == yaml.ScalarNode {
		switch n.ShortTag() {
		case "!!str", "!!int", "!!float", "!!bool", "!!timestamp":
			return n.Value, true
		}
	}
	hint := ""
	if n.Kind == yaml.MappingNode && len(n.Content) > 0 {
		hint = ` (a ": " in an unquoted string makes a mapping; put the string in quotes)`
	}
	l.errorf(n, "%s: expected a string, got %s%s", what, describe(n), hint)
	return "", false
}

// textList returns the texts of list n.
func (l *loader) textList(n *yaml.Node, what string) ([]string, bool) {
	if n = l.resolve(n, what); n == nil {
		return nil, false
	}
	if n.Kind != yaml.SequenceNode {
		l.errorf(n, "%s: expected a list, got %s", what, describe(n))
		return nil, false
	}
	out := make([]string, 0, len(n.Content))
	ok := true
	for _, item := range n.Content {
		s, good := l.text(item, what)
		ok = ok && good
		out = append(out, s)
	}
	return out, ok
}

// boolean returns the value of boolean n.
func (l *loader) boolean(n *yaml.Node, what string) (bool, bool) {
	if n = l.resolve(n, what); n == nil {
		return false, false
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!bool" {
		if b, err := strconv.ParseBool(strings.ToLower(n.Value)); err == nil {
			return b, true
		}
	}
	l.errorf(n, "%s: expected true or false, got %s", what, describe(n))
	return false, false
}

// integer returns the value of integer n.
func (l *loader) integer(n *yaml.Node, what string) (int, bool) {
	if n = l.resolve(n, what); n == nil {
		return 0, false
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!int" {
		if i, err := strconv.ParseInt(strings.ReplaceAll(n.Value, "_", ""), 0, strconv.IntSize); err == nil {
			return int(i), true
		}
	}
	l.errorf(n, "%s: expected a whole number, got %s", what, describe(n))
	return 0, false
}

// commands returns the commands of a script: a string, or a list of
// strings and lists nested up to GitLab's limit, flattened in order.
func (l *loader) commands(n *yaml.Node, what string) ([]string, bool) {
	if n = l.resolve(n, what); n == nil {
		return nil, false
	}
	if n.Kind != yaml.SequenceNode {
		s, ok := l.text(n, what)
		if !ok {
			return nil, false
		}
		return []string{s}, true
	}
	out := []string{}
	ok := l.flatten(n, what, 1, &out)
	return out, ok
}

func (l *loader) flatten(list *yaml.Node, what string, depth int, out *[]string) bool {
	if depth > maxScriptDepth {
		l.errorf(list, "%s: lists are nested more than %d deep", what, maxScriptDepth)
		return false
	}
	ok := true
	for _, item := range list.Content {
		if item = l.resolve(item, what); item == nil {
			ok = false
			continue
		}
		if item.Kind == yaml.SequenceNode {
			ok = l.flatten(item, what, depth+1, out) && ok
			continue
		}
		s, good := l.text(item, what)
		ok = ok && good
		*out = append(*out, s)
	}
	return ok
}
