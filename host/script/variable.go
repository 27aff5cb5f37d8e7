// Package script generates the shell scripts a job's steps run: GitLab's
// stage semantics (errexit, echoed commands, exported variables, file
// variables) for bash and POSIX sh.
package script

// Variable is a CI/CD variable as a job sees it.
type Variable struct {
	Key   string
	Value string
	// Masked values are replaced by [MASKED] in the trace.
	Masked bool
	// File variables are written to a file (mode 0600) whose path becomes
	// the variable's value; the file is removed when the step ends.
	File bool
	// Raw values are exported as they are; others may reference other
	// variables with $VAR or ${VAR}, which Generate expands with Expand
	// (never the shell) before it quotes the value.
	Raw bool
}
