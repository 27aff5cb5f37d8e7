package pipeline

import (
	"strconv"
	"testing"
	"time"
)

func TestParseDuration(t *testing.T) {
	tests := []struct {
		text string
		want time.Duration
	}{
		{"90s", 90 * time.Second},
		{"3600", time.Hour},
		{"1h 30m", 90 * time.Minute},
		{"1h30m", 90 * time.Minute},
		{"10 minutes", 10 * time.Minute},
		{"1 minute", time.Minute},
		{"2 Hours", 2 * time.Hour},
		{"1.5 hours", 90 * time.Minute},
		{".5h", 30 * time.Minute},
		{"3 hrs 4 mins 5 secs", 3*time.Hour + 4*time.Minute + 5*time.Second},
		{"2 days, 3 hours and 4 minutes", 51*time.Hour + 4*time.Minute},
		{"1 week", 7 * 24 * time.Hour},
		{"1w 2d", 9 * 24 * time.Hour},
		{"1 month", 30 * 24 * time.Hour},
		{"1 year", 365 * 24 * time.Hour},
		{"  45 sec  ", 45 * time.Second},
		{"1:30", 90 * time.Second},
		{"1:30:00", 90 * time.Minute},
		{"1:00:00:00", 24 * time.Hour},
		{"0:00:01.5", 1500 * time.Millisecond},
		{"0s", 0},
	}
	for _, tt := range tests {
		got, err := ParseDuration(tt.text)
		if err != nil || got != tt.want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", tt.text, got, err, tt.want)
		}
	}
}

func TestParseDurationErrors(t *testing.T) {
	tests := []struct {
		text string
		want string // the reason after `invalid duration "text": `
	}{
		{"", "it is empty"},
		{"   ", "it is empty"},
		{"hour", `"hour" has no number before it`},
		{"soon", `"soon" is not a unit`},
		{"1 fortnight", `"fortnight" is not a unit (use s, m, h, d, w, mo or y)`},
		{"1h30", "30 has no unit"},
		{"1 and", "1 has no unit"},
		{"and", "it has no number"},
		{"1.2.3s", `"1.2.3" is not a number`},
		{"-5m", "it must not be negative"},
		{"5m!", `unexpected '!'`},
		{"5 minütes", `unexpected 'ü'`},
		{"10 ms", `"ms" is not a unit (use s, m, h, d, w, mo or y)`},
		{"1e3", `"e" is not a unit (use s, m, h, d, w, mo or y)`},
		{"99999999999 years", "it is too long"},
		{"1:2:3:4:5", "a clock has at most four parts (days:hours:minutes:seconds)"},
		{"1.5:00", `"1.5" is not a whole number`},
		{"1::00", `"" is not a whole number`},
		{"a:b", `"a" is not a whole number`},
		{"999999999999:00:00", "it is too long"},
	}
	for _, tt := range tests {
		_, err := ParseDuration(tt.text)
		want := "invalid duration " + strconv.Quote(tt.text) + ": " + tt.want
		if err == nil || err.Error() != want {
			t.Errorf("ParseDuration(%q) error = %v, want %s", tt.text, err, want)
		}
	}
}
