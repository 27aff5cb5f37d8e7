package script

import "os"

// Expand replaces references to variables in value the way GitLab Runner
// does before it hands variables to the shell: $NAME and ${NAME} become the
// value lookup gives for NAME, or nothing when lookup does not know it;
// "$$" becomes one "$"; the shell's special parameters ($*, $#, $@, $!,
// $?, $-, $0 … $9) become nothing; a "$" followed by anything else (or at
// the end) stays as it is; an unterminated "${" and an empty "${}" vanish.
// Nothing is evaluated: ${A:-b}, $(cmd) and `cmd` are not shell syntax here
// (the first asks for a variable named "A:-b", the others are kept as
// text). Expansion is one level deep: a looked-up value is inserted as it
// is, not expanded again.
func Expand(value string, lookup func(name string) (string, bool)) string {
	return os.Expand(value, func(name string) string {
		switch name {
		case "$":
			return "$"
		case "*", "#", "@", "!", "?", "-", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9":
			return ""
		}
		v, _ := lookup(name)
		return v
	})
}
