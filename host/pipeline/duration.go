package pipeline

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// ParseDuration parses a duration as GitLab's timeout keyword takes it:
// numbers with units ("1h 30m", "10 minutes", "90s", "1.5 hours",
// "2 days, 3 hours and 4 minutes"), a clock ("1:30:00" is an hour and a
// half, "1:30" a minute and a half) or a bare number of seconds ("3600").
//
// Units are s, sec, second; m, min, minute; h, hr, hour; d, day; w, wk,
// week; mo, month (30 days); y, yr, year (365 days); plurals and any case
// are accepted.
func ParseDuration(text string) (time.Duration, error) {
	s := strings.ToLower(strings.TrimSpace(text))
	if s == "" {
		return 0, fmt.Errorf("invalid duration %q: it is empty", text)
	}
	bad := func(format string, args ...any) (time.Duration, error) {
		return 0, fmt.Errorf("invalid duration %q: %s", text, fmt.Sprintf(format, args...))
	}
	if strings.Contains(s, ":") {
		return parseClock(text, s)
	}
	if isNumber(s) {
		s += "s" // a bare number is seconds
	}
	var total float64 // nanoseconds
	terms := 0
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == ',':
			i++
		case isLetter(c):
			word := span(s, i, isLetter)
			i += len(word)
			if word == "and" {
				continue
			}
			if _, ok := durationUnit(word); ok {
				return bad("%q has no number before it", word)
			}
			return bad("%q is not a unit", word)
		case isDigit(c) || c == '.':
			num := span(s, i, func(c byte) bool { return isDigit(c) || c == '.' })
			i += len(num)
			value, err := strconv.ParseFloat(num, 64)
			if err != nil {
				return bad("%q is not a number", num)
			}
			i += len(span(s, i, func(c byte) bool { return c == ' ' || c == '\t' }))
			word := span(s, i, isLetter)
			i += len(word)
			if word == "" || word == "and" {
				return bad("%s has no unit", num)
			}
			unit, ok := durationUnit(word)
			if !ok {
				return bad("%q is not a unit (use s, m, h, d, w, mo or y)", word)
			}
			total += value * float64(unit)
			terms++
		case c == '-':
			return bad("it must not be negative")
		default:
			r, _ := utf8.DecodeRuneInString(s[i:])
			return bad("unexpected %q", r)
		}
	}
	if terms == 0 {
		return bad("it has no number")
	}
	if total >= math.MaxInt64 {
		return bad("it is too long")
	}
	return time.Duration(math.Round(total)), nil
}

// parseClock parses [[days:]hours:]minutes:seconds.
func parseClock(text, s string) (time.Duration, error) {
	fields := strings.Split(s, ":")
	if len(fields) > 4 {
		return 0, fmt.Errorf("invalid duration %q: a clock has at most four parts (days:hours:minutes:seconds)", text)
	}
	units := []time.Duration{time.Second, time.Minute, time.Hour, 24 * time.Hour}
	var total float64
	for i, f := range fields {
		f = strings.TrimSpace(f)
		last := i == len(fields)-1
		value, err := strconv.ParseFloat(f, 64)
		if err != nil || !isNumber(f) || (!last && strings.Contains(f, ".")) {
			return 0, fmt.Errorf("invalid duration %q: %q is not a whole number", text, f)
		}
		total += value * float64(units[len(fields)-1-i])
	}
	if total >= math.MaxInt64 {
		return 0, fmt.Errorf("invalid duration %q: it is too long", text)
	}
	return time.Duration(math.Round(total)), nil
}

// durationUnit returns the length of the unit called word.
func durationUnit(word string) (time.Duration, bool) {
	const day = 24 * time.Hour
	switch word {
	case "s", "sec", "secs", "second", "seconds":
		return time.Second, true
	case "m", "min", "mins", "minute", "minutes":
		return time.Minute, true
	case "h", "hr", "hrs", "hour", "hours":
		return time.Hour, true
	case "d", "day", "days":
		return day, true
	case "w", "wk", "wks", "week", "weeks":
		return 7 * day, true
	case "mo", "mos", "month", "months":
		return 30 * day, true
	case "y", "yr", "yrs", "year", "years":
		return 365 * day, true
	}
	return 0, false
}

// isNumber reports whether s is digits with at most one decimal point.
func isNumber(s string) bool {
	return s != "" && s != "." && len(span(s, 0, func(c byte) bool { return isDigit(c) || c == '.' })) == len(s) && strings.Count(s, ".") <= 1
}

// span returns the longest prefix of s[i:] whose bytes all satisfy ok.
func span(s string, i int, ok func(byte) bool) string {
	j := i
	for j < len(s) && ok(s[j]) {
		j++
	}
	return s[i:j]
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' }
func isDigit(c byte) bool  { return c >= '0' && c <= '9' }
