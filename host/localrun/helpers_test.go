package localrun

import (
	"regexp"
	"testing"
	"time"
)

func mustRegexp(t *testing.T, s string) *regexp.Regexp {
	t.Helper()
	re, err := regexp.Compile(s)
	if err != nil {
		t.Fatal(err)
	}
	return re
}

func timeZero() time.Time { return time.Unix(0, 0) }
