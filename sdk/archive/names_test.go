package archive_test

import (
	"strings"
	"testing"

	"github.com/berthci/berth/sdk/archive"
)

func TestJobDirName(t *testing.T) {
	tests := []struct{ id, want string }{
		{"42", "42"},
		{"job-1.a_b", "job-1.a_b"},
		{"a/b", "a_b-"},
		{"..", "..-"},
		{"", "-"},
		{strings.Repeat("x", 65), strings.Repeat("x", 48) + "-"},
	}
	seen := map[string]string{}
	for _, tt := range tests {
		got := archive.JobDirName(tt.id)
		if !strings.HasPrefix(got, tt.want) || (strings.HasSuffix(tt.want, "-") && len(got) != len(tt.want)+12) || (!strings.HasSuffix(tt.want, "-") && got != tt.want) {
			t.Errorf("JobDirName(%q) = %q, want %q (followed by 12 hex digits when it ends in -)", tt.id, got, tt.want)
		}
		if other, dup := seen[got]; dup {
			t.Errorf("JobDirName gives %q for both %q and %q", got, other, tt.id)
		}
		seen[got] = tt.id
	}
	if archive.JobDirName("a/b") == archive.JobDirName("a_b") {
		t.Errorf("a/b and a_b share a directory")
	}
}

func TestCleanRelative(t *testing.T) {
	tests := []struct{ name, want, wantErr string }{
		{name: "", want: "."},
		{name: ".", want: "."},
		{name: "a/./b/../c/", want: "a/c"},
		{name: "a/../..", wantErr: "outside the directory"},
		{name: "../a", wantErr: "outside the directory"},
		{name: "/etc", wantErr: "absolute path"},
	}
	for _, tt := range tests {
		got, err := archive.CleanRelative(tt.name)
		if got != tt.want || (tt.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("CleanRelative(%q) = %q, %v; want %q, error %q", tt.name, got, err, tt.want, tt.wantErr)
		}
	}
}
