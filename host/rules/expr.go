// Package rules evaluates GitLab CI's conditions: the expressions of
// rules:if and only/except:variables.
//
// An expression compares variables ($NAME or ${NAME}), strings ("…" or
// '…'), regular expressions (/…/ with flags i, m, s) and null with ==, !=,
// =~ and !~, and combines conditions with && (binding tighter) and ||, in
// parentheses as needed. A variable alone is true when it is set and not
// empty. An unset variable equals null, not ""; on the left of =~ or !~ it
// counts as "". The right of =~ may be a variable holding a "/…/" pattern.
// Patterns use Go's RE2 syntax, which is what GitLab uses too.
package rules

import (
	"fmt"
	"regexp"
	"strings"
)

// Expr is a parsed expression.
type Expr struct {
	source string
	root   node
}

// String returns the expression as written.
func (e *Expr) String() string { return e.source }

// Lookup gives a variable's value and whether it is set.
type Lookup func(name string) (string, bool)

// SyntaxError is a problem in an expression, at a byte offset of it.
type SyntaxError struct {
	Offset  int
	Message string
}

func (e *SyntaxError) Error() string {
	return fmt.Sprintf("at character %d: %s", e.Offset+1, e.Message)
}

// Parse parses an expression.
func Parse(source string) (*Expr, error) {
	toks, err := lex(source)
	if err != nil {
		return nil, err
	}
	p := &parser{toks: toks, src: source}
	n, err := p.or()
	if err != nil {
		return nil, err
	}
	if t := p.peek(); t.kind != tEOF {
		return nil, &SyntaxError{t.pos, fmt.Sprintf("unexpected %s", t.describe())}
	}
	if _, isRegex := n.(regexNode); isRegex {
		return nil, &SyntaxError{0, "a pattern alone is not a condition: compare a value to it with =~"}
	}
	return &Expr{source: source, root: n}, nil
}

// Eval evaluates the expression with the variables lookup gives.
func (e *Expr) Eval(lookup Lookup) bool {
	return truthy(e.root.eval(lookup))
}

type tokenKind int

const (
	tEOF tokenKind = iota
	tVar
	tString
	tRegex
	tNull
	tEq
	tNe
	tMatch
	tNoMatch
	tAnd
	tOr
	tLParen
	tRParen
)

type token struct {
	kind tokenKind
	text string // variable name, string value, pattern
	pos  int
}

func (t token) describe() string {
	switch t.kind {
	case tEOF:
		return "end of the expression"
	case tVar:
		return "variable $" + t.text
	case tString:
		return fmt.Sprintf("string %q", t.text)
	case tRegex:
		return "pattern /" + t.text + "/"
	case tNull:
		return "null"
	case tLParen:
		return `"("`
	case tRParen:
		return `")"`
	}
	return fmt.Sprintf("operator %q", t.text)
}

func isNameChar(c byte, first bool) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || !first && c >= '0' && c <= '9'
}

func lex(s string) ([]token, error) {
	var toks []token
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '$':
			start := i
			i++
			braced := i < len(s) && s[i] == '{'
			if braced {
				i++
			}
			j := i
			for j < len(s) && isNameChar(s[j], j == i) {
				j++
			}
			if j == i {
				return nil, &SyntaxError{start, "a $ must be followed by a variable name"}
			}
			name := s[i:j]
			if braced {
				if j >= len(s) || s[j] != '}' {
					return nil, &SyntaxError{start, "${ is not closed with }"}
				}
				j++
			}
			toks = append(toks, token{tVar, name, start})
			i = j
		case c == '"' || c == '\'':
			end := strings.IndexByte(s[i+1:], c)
			if end < 0 {
				return nil, &SyntaxError{i, "the string is not closed"}
			}
			toks = append(toks, token{tString, s[i+1 : i+1+end], i})
			i += end + 2
		case c == '/':
			start := i
			var b strings.Builder
			i++
			closed := false
			for i < len(s) {
				if s[i] == '\\' && i+1 < len(s) && s[i+1] == '/' {
					b.WriteByte('/')
					i += 2
					continue
				}
				if s[i] == '\\' && i+1 < len(s) {
					b.WriteString(s[i : i+2])
					i += 2
					continue
				}
				if s[i] == '/' {
					closed = true
					i++
					break
				}
				b.WriteByte(s[i])
				i++
			}
			if !closed {
				return nil, &SyntaxError{start, "the pattern is not closed with /"}
			}
			flags := ""
			for i < len(s) && isNameChar(s[i], false) {
				flags += string(s[i])
				i++
			}
			pat, err := compilePattern(b.String(), flags)
			if err != nil {
				return nil, &SyntaxError{start, err.Error()}
			}
			toks = append(toks, token{tRegex, pat, start})
		case strings.HasPrefix(s[i:], "=="):
			toks, i = append(toks, token{tEq, "==", i}), i+2
		case strings.HasPrefix(s[i:], "!="):
			toks, i = append(toks, token{tNe, "!=", i}), i+2
		case strings.HasPrefix(s[i:], "=~"):
			toks, i = append(toks, token{tMatch, "=~", i}), i+2
		case strings.HasPrefix(s[i:], "!~"):
			toks, i = append(toks, token{tNoMatch, "!~", i}), i+2
		case strings.HasPrefix(s[i:], "&&"):
			toks, i = append(toks, token{tAnd, "&&", i}), i+2
		case strings.HasPrefix(s[i:], "||"):
			toks, i = append(toks, token{tOr, "||", i}), i+2
		case c == '(':
			toks, i = append(toks, token{tLParen, "(", i}), i+1
		case c == ')':
			toks, i = append(toks, token{tRParen, ")", i}), i+1
		case strings.HasPrefix(s[i:], "null") && (i+4 == len(s) || !isNameChar(s[i+4], false)):
			toks, i = append(toks, token{tNull, "null", i}), i+4
		default:
			word := s[i:]
			if k := strings.IndexAny(word, " \t()"); k > 0 {
				word = word[:k]
			}
			hint := ""
			if isNameChar(c, true) {
				hint = fmt.Sprintf(" (a variable is written $%s, a string \"%s\")", word, word)
			}
			return nil, &SyntaxError{i, fmt.Sprintf("unexpected %q%s", word, hint)}
		}
	}
	return append(toks, token{kind: tEOF, pos: len(s)}), nil
}

// compilePattern checks a pattern with its flags and returns it in Go's
// syntax: i is case-insensitive, m and s let . match newlines (Ruby's m).
func compilePattern(pat, flags string) (string, error) {
	prefix := ""
	for _, f := range flags {
		switch f {
		case 'i':
			prefix += "i"
		case 'm', 's':
			prefix += "s"
		default:
			return "", fmt.Errorf("unknown pattern flag %q (use i or m)", f)
		}
	}
	if prefix != "" {
		pat = "(?" + prefix + ")" + pat
	}
	if _, err := regexp.Compile(pat); err != nil {
		return "", fmt.Errorf("invalid pattern: %v", err)
	}
	return pat, nil
}

type parser struct {
	toks []token
	i    int
	src  string
}

func (p *parser) peek() token { return p.toks[p.i] }
func (p *parser) next() token {
	t := p.toks[p.i]
	if t.kind != tEOF {
		p.i++
	}
	return t
}

func (p *parser) or() (node, error) {
	left, err := p.and()
	if err != nil {
		return nil, err
	}
	for p.peek().kind == tOr {
		p.next()
		right, err := p.and()
		if err != nil {
			return nil, err
		}
		left = orNode{left, right}
	}
	return left, nil
}

func (p *parser) and() (node, error) {
	left, err := p.comparison()
	if err != nil {
		return nil, err
	}
	for p.peek().kind == tAnd {
		p.next()
		right, err := p.comparison()
		if err != nil {
			return nil, err
		}
		left = andNode{left, right}
	}
	return left, nil
}

func (p *parser) comparison() (node, error) {
	left, err := p.operand()
	if err != nil {
		return nil, err
	}
	op := p.peek()
	switch op.kind {
	case tEq, tNe, tMatch, tNoMatch:
	default:
		return left, nil
	}
	p.next()
	right, err := p.operand()
	if err != nil {
		return nil, err
	}
	switch op.kind {
	case tEq, tNe:
		if _, ok := right.(regexNode); ok {
			return nil, &SyntaxError{op.pos, fmt.Sprintf("%s compares values; use =~ or !~ with a pattern", op.text)}
		}
		return compareNode{left, right, op.kind == tNe}, nil
	default:
		switch right.(type) {
		case regexNode, varNode:
		default:
			return nil, &SyntaxError{op.pos, fmt.Sprintf("the right of %s must be a pattern (/…/) or a variable holding one", op.text)}
		}
		return matchNode{left, right, op.kind == tNoMatch}, nil
	}
}

func (p *parser) operand() (node, error) {
	t := p.next()
	switch t.kind {
	case tVar:
		return varNode(t.text), nil
	case tString:
		return stringNode(t.text), nil
	case tRegex:
		return regexNode(t.text), nil
	case tNull:
		return nullNode{}, nil
	case tLParen:
		n, err := p.or()
		if err != nil {
			return nil, err
		}
		if c := p.next(); c.kind != tRParen {
			return nil, &SyntaxError{c.pos, fmt.Sprintf("expected \")\" to close the \"(\" at character %d, got %s", t.pos+1, c.describe())}
		}
		return n, nil
	}
	return nil, &SyntaxError{t.pos, fmt.Sprintf("expected a variable, a string, a pattern or null, got %s", t.describe())}
}

// value is what an operand evaluates to; set is false for null.
type value struct {
	s   string
	set bool
}

type node interface{ eval(Lookup) value }

type (
	varNode     string
	stringNode  string
	regexNode   string
	nullNode    struct{}
	orNode      struct{ l, r node }
	andNode     struct{ l, r node }
	compareNode struct {
		l, r   node
		negate bool
	}
	matchNode struct {
		l, r   node
		negate bool
	}
)

func truthy(v value) bool { return v.set && v.s != "" }

func boolValue(b bool) value {
	if b {
		return value{"true", true}
	}
	return value{}
}

func (n varNode) eval(l Lookup) value {
	s, ok := l(string(n))
	return value{s, ok}
}
func (n stringNode) eval(Lookup) value { return value{string(n), true} }
func (n regexNode) eval(Lookup) value  { return value{string(n), true} }
func (nullNode) eval(Lookup) value     { return value{} }
func (n orNode) eval(l Lookup) value   { return boolValue(truthy(n.l.eval(l)) || truthy(n.r.eval(l))) }
func (n andNode) eval(l Lookup) value  { return boolValue(truthy(n.l.eval(l)) && truthy(n.r.eval(l))) }

func (n compareNode) eval(l Lookup) value {
	a, b := n.l.eval(l), n.r.eval(l)
	return boolValue((a == b) != n.negate)
}

func (n matchNode) eval(l Lookup) value {
	text := n.l.eval(l).s
	var re *regexp.Regexp
	switch r := n.r.(type) {
	case regexNode:
		re = regexp.MustCompile(string(r)) // checked by the lexer
	default:
		v := r.eval(l)
		re = patternFromValue(v.s)
	}
	if re == nil {
		return boolValue(n.negate) // GitLab: a variable that is not a pattern matches nothing
	}
	return boolValue(re.MatchString(text) != n.negate)
}

// patternFromValue reads "/pattern/flags" from a variable's value.
func patternFromValue(s string) *regexp.Regexp {
	if len(s) < 2 || s[0] != '/' {
		return nil
	}
	end := strings.LastIndexByte(s, '/')
	if end == 0 {
		return nil
	}
	pat, err := compilePattern(strings.ReplaceAll(s[1:end], `\/`, "/"), s[end+1:])
	if err != nil {
		return nil
	}
	return regexp.MustCompile(pat)
}
