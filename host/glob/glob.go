// Package glob matches slash-separated paths against the patterns GitLab
// CI takes in rules:exists, rules:changes, include:local, artifacts:paths,
// artifacts:exclude and cache:paths.
//
// A pattern is matched against a whole path, one segment between slashes at
// a time: "*" matches any run of characters within a segment (dot files
// included), "?" one character, "[abc]", "[a-z]" and "[!a-z]" one character
// of (or not of) a set, "{a,b}" either alternative, and a segment that is
// exactly "**" matches any number of segments, none included. A "\" quotes
// the next character. A trailing slash is ignored.
package glob

import (
	"path"
	"strings"
	"unicode/utf8"
)

// Match reports whether name matches pattern. Both are slash-separated and
// relative; a leading "./" is ignored.
func Match(pattern, name string) bool {
	for _, p := range expandBraces(clean(pattern)) {
		if matchSegments(strings.Split(p, "/"), strings.Split(clean(name), "/")) {
			return true
		}
	}
	return false
}

// MatchPrefix reports whether some path below dir could match pattern, that
// is, whether a walk should descend into dir.
func MatchPrefix(pattern, dir string) bool {
	dir = clean(dir)
	if dir == "." || dir == "" {
		return true
	}
	names := strings.Split(dir, "/")
	for _, p := range expandBraces(clean(pattern)) {
		if prefixSegments(strings.Split(p, "/"), names) {
			return true
		}
	}
	return false
}

// Base returns the longest leading part of pattern without any special
// character: the folder below which everything that matches lies ("." when
// the first segment is already a pattern).
func Base(pattern string) string {
	segs := strings.Split(clean(pattern), "/")
	var out []string
	for i, s := range segs {
		if i == len(segs)-1 || strings.ContainsAny(s, `*?[{\`) {
			if !strings.ContainsAny(s, `*?[{\`) {
				out = append(out, s)
			}
			break
		}
		out = append(out, s)
	}
	if len(out) == 0 {
		return "."
	}
	return strings.Join(out, "/")
}

// HasMeta reports whether pattern has any special character.
func HasMeta(pattern string) bool { return strings.ContainsAny(pattern, `*?[{\`) }

func clean(p string) string {
	p = strings.TrimPrefix(p, "./")
	p = strings.TrimPrefix(p, "/")
	if p == "" {
		return "."
	}
	if strings.HasSuffix(p, "/") && len(p) > 1 {
		p = strings.TrimRight(p, "/")
	}
	if !strings.ContainsAny(p, `\`) {
		p = path.Clean(p)
	}
	return p
}

func matchSegments(pat, name []string) bool {
	for len(pat) > 0 {
		if pat[0] == "**" {
			rest := pat[1:]
			for len(rest) > 0 && rest[0] == "**" {
				rest = rest[1:]
			}
			if len(rest) == 0 {
				return true
			}
			for i := 0; i <= len(name); i++ {
				if matchSegments(rest, name[i:]) {
					return true
				}
			}
			return false
		}
		if len(name) == 0 || !matchSegment(pat[0], name[0]) {
			return false
		}
		pat, name = pat[1:], name[1:]
	}
	return len(name) == 0
}

// prefixSegments reports whether name (a folder) can be the start of a
// path that matches pat.
func prefixSegments(pat, name []string) bool {
	for len(name) > 0 {
		if len(pat) == 0 {
			return false
		}
		if pat[0] == "**" {
			return true
		}
		if !matchSegment(pat[0], name[0]) {
			return false
		}
		pat, name = pat[1:], name[1:]
	}
	return true
}

// matchSegment matches one segment; no "/" appears in either.
func matchSegment(pat, s string) bool {
	for len(pat) > 0 {
		switch pat[0] {
		case '*':
			for len(pat) > 0 && pat[0] == '*' {
				pat = pat[1:]
			}
			if pat == "" {
				return true
			}
			for i := 0; i <= len(s); i++ {
				if matchSegment(pat, s[i:]) {
					return true
				}
			}
			return false
		case '?':
			if s == "" {
				return false
			}
			_, size := firstRune(s)
			pat, s = pat[1:], s[size:]
		case '[':
			if s == "" {
				return false
			}
			r, size := firstRune(s)
			ok, rest, valid := matchClass(pat, r)
			if !valid {
				// An unclosed [ is an ordinary character.
				if s[0] != '[' {
					return false
				}
				pat, s = pat[1:], s[1:]
				continue
			}
			if !ok {
				return false
			}
			pat, s = rest, s[size:]
		case '\\':
			if len(pat) > 1 {
				pat = pat[1:]
			}
			fallthrough
		default:
			if s == "" || s[0] != pat[0] {
				return false
			}
			pat, s = pat[1:], s[1:]
		}
	}
	return s == ""
}

func firstRune(s string) (rune, int) { return utf8.DecodeRuneInString(s) }

// matchClass matches r against the class at the start of pat ("[...]").
// It returns whether r is in it, what follows the class, and whether the
// class is well-formed.
func matchClass(pat string, r rune) (bool, string, bool) {
	i := 1
	negate := false
	if i < len(pat) && (pat[i] == '!' || pat[i] == '^') {
		negate = true
		i++
	}
	matched := false
	first := true
	for {
		if i >= len(pat) {
			return false, "", false
		}
		if pat[i] == ']' && !first {
			i++
			break
		}
		first = false
		lo, n := classChar(pat[i:])
		if n == 0 {
			return false, "", false
		}
		i += n
		hi := lo
		if i+1 < len(pat) && pat[i] == '-' && pat[i+1] != ']' {
			h, m := classChar(pat[i+1:])
			if m == 0 {
				return false, "", false
			}
			hi = h
			i += 1 + m
		}
		if lo <= r && r <= hi {
			matched = true
		}
	}
	return matched != negate, pat[i:], true
}

func classChar(s string) (rune, int) {
	if s == "" {
		return 0, 0
	}
	if s[0] == '\\' {
		if len(s) < 2 {
			return 0, 0
		}
		r, n := firstRune(s[1:])
		return r, n + 1
	}
	return firstRune(s)
}

// expandBraces turns "a{b,c}d" into "abd" and "acd"; nested braces work.
// At most 1024 alternatives are made; an unbalanced brace is literal.
func expandBraces(p string) []string {
	out := []string{p}
	for {
		var next []string
		changed := false
		for _, s := range out {
			alts, ok := expandOne(s)
			if ok {
				changed = true
			}
			next = append(next, alts...)
			if len(next) > 1024 {
				return out
			}
		}
		out = next
		if !changed {
			return out
		}
	}
}

// expandOne expands the first (outermost) brace group of s.
func expandOne(s string) ([]string, bool) {
	start := -1
	depth := 0
	var commas []int
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '{':
			if depth == 0 {
				start = i
				commas = commas[:0]
			}
			depth++
		case ',':
			if depth == 1 {
				commas = append(commas, i)
			}
		case '}':
			if depth == 0 {
				continue
			}
			depth--
			if depth == 0 {
				if len(commas) == 0 {
					start = -1
					continue
				}
				var alts []string
				prev := start + 1
				for _, c := range append(commas, i) {
					alts = append(alts, s[:start]+s[prev:c]+s[i+1:])
					prev = c + 1
				}
				return alts, true
			}
		}
	}
	return []string{s}, false
}
