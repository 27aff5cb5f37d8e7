package glob

import "testing"

func TestMatch(t *testing.T) {
	tests := []struct {
		pattern, name string
		want          bool
	}{
		{"*.go", "main.go", true},
		{"*.go", "cmd/main.go", false},
		{"**/*.go", "main.go", true},
		{"**/*.go", "cmd/berth/main.go", true},
		{"cmd/**", "cmd/berth/main.go", true},
		{"cmd/**/main.go", "cmd/main.go", true},
		{"cmd/**/main.go", "cmd/a/b/main.go", true},
		{"cmd/**/main.go", "other/main.go", false},
		{"*", ".hidden", true},
		{"docs/*.md", "docs/a.md", true},
		{"docs/*.md", "docs/sub/a.md", false},
		{"file?.txt", "file1.txt", true},
		{"file?.txt", "file12.txt", false},
		{"[ab].txt", "a.txt", true},
		{"[!ab].txt", "a.txt", false},
		{"[a-c]x", "bx", true},
		{"*.{js,css}", "app.css", true},
		{"*.{js,css}", "app.html", false},
		{"{src,lib}/**/*.{c,h}", "lib/x/y.h", true},
		{"dist/", "dist", true},
		{"./dist", "dist", true},
		{"dist", "dist/a", false},
		{`a\*b`, "a*b", true},
		{`a\*b`, "axb", false},
		{"[", "[", true},
		{"Dockerfile", "Dockerfile", true},
	}
	for _, tt := range tests {
		if got := Match(tt.pattern, tt.name); got != tt.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tt.pattern, tt.name, got, tt.want)
		}
	}
}

func TestMatchPrefixAndBase(t *testing.T) {
	prefix := []struct {
		pattern, dir string
		want         bool
	}{
		{"dist/*.js", "dist", true},
		{"dist/*.js", "src", false},
		{"**/*.log", "a/b", true},
		{"a/b/*.txt", "a", true},
		{"a/b/*.txt", "a/c", false},
	}
	for _, tt := range prefix {
		if got := MatchPrefix(tt.pattern, tt.dir); got != tt.want {
			t.Errorf("MatchPrefix(%q, %q) = %v, want %v", tt.pattern, tt.dir, got, tt.want)
		}
	}
	base := map[string]string{
		"dist/*.js": "dist", "**/*.log": ".", "a/b/c.txt": "a/b/c.txt", "out/": "out", "a/{b,c}/d": "a", "*": ".",
	}
	for p, want := range base {
		if got := Base(p); got != want {
			t.Errorf("Base(%q) = %q, want %q", p, got, want)
		}
	}
}
