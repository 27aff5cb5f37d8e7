package trace

import (
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// SectionName turns name into a name GitLab accepts in section markers:
// ASCII letters are lower-cased, every other byte outside [a-z0-9_.-]
// becomes "_", and an empty name becomes "section".
func SectionName(name string) string {
	if name == "" {
		return "section"
	}
	b := []byte(name)
	for i, c := range b {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '_', c == '.', c == '-':
		case c >= 'A' && c <= 'Z':
			b[i] = c + ('a' - 'A')
		default:
			b[i] = '_'
		}
	}
	return string(b)
}

// oneLine replaces line breaks with spaces.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\n' || r == '\r' {
			return ' '
		}
		return r
	}, s)
}

// SectionStart writes the marker that opens a collapsible section as GitLab
// renders it: "section_start:<unix>:<name>\r\x1b[0K<header>\n". The name is
// passed through SectionName; line breaks in header become spaces.
func SectionStart(w io.Writer, at time.Time, name, header string) error {
	if _, err := io.WriteString(w, startMarker(at, name, header)); err != nil {
		return fmt.Errorf("writing the start of trace section %q: %w", name, err)
	}
	return nil
}

// SectionEnd writes the marker that closes a section:
// "section_end:<unix>:<name>\r\x1b[0K".
func SectionEnd(w io.Writer, at time.Time, name string) error {
	if _, err := io.WriteString(w, endMarker(at, name)); err != nil {
		return fmt.Errorf("writing the end of trace section %q: %w", name, err)
	}
	return nil
}

func startMarker(at time.Time, name, header string) string {
	return "section_start:" + strconv.FormatInt(at.Unix(), 10) + ":" + SectionName(name) +
		"\r\x1b[0K" + oneLine(header) + "\n"
}

func endMarker(at time.Time, name string) string {
	return "section_end:" + strconv.FormatInt(at.Unix(), 10) + ":" + SectionName(name) + "\r\x1b[0K"
}

// markerPattern matches the markers SectionStart and SectionEnd write (and
// GitLab's section options, "name[collapsed=true]"): group 1 is start or
// end, group 2 the name, group 3 the options.
var markerPattern = regexp.MustCompile(`section_(start|end):[0-9]+:([A-Za-z0-9_.-]+)(\[[^\]]*\])?\r\x1b\[0K`)

// MarkerPattern matches a section marker in a trace, for the programs that
// show traces (see markerPattern for its groups).
func MarkerPattern() *regexp.Regexp { return markerPattern }
