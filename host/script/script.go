package script

import (
	"fmt"
	"path"
	"strings"
)

// Stage is one step's script before it is written for a shell.
type Stage struct {
	// Name is the stage's name, e.g. "step_script" or "after_script"; it
	// only appears in a comment at the top of the script.
	Name string
	// Commands are run in order, each as written in the YAML (an entry may
	// span several lines). Entries that are empty or only white space are
	// skipped.
	Commands []string
	// Variables are exported in order; a later one with the same key wins.
	Variables []Variable
	// BuildDir is where the commands run; empty means the shell's
	// starting directory.
	BuildDir string
	// TmpDir is where file variables are written. It must be an absolute
	// path when there are file variables; it is created with mode 0700 if
	// it is missing.
	TmpDir string
	// Color echoes commands in bold green, as GitLab does.
	Color bool
}

// Generate writes s as a script for shell, "bash" or "sh" (POSIX sh, such
// as dash), with GitLab's stage semantics:
//
//   - bash runs with "set -eo pipefail", sh with "set -e": the script stops
//     at the first failing command and exits with its exit code; "exit N"
//     in a command exits the script with N.
//   - Every variable is exported with single-quote quoting, so its value
//     reaches the commands byte for byte (any byte but NUL, which no shell
//     can hold). Values not marked Raw are first expanded with Expand
//     against the stage's variables, as GitLab Runner does: the lookup sees
//     every variable of the stage, the last one with a key winning, with its
//     value as given (not expanded) or, for a file variable, its file's
//     path. Values are never evaluated by the shell.
//   - A file variable's value is written, under umask 077, to TmpDir/KEY
//     (mode 0600), and the variable holds that path. A trap removes the
//     files when the script exits, also when a command fails or the shell
//     gets SIGHUP, SIGINT or SIGTERM (it then exits 129, 130 or 143).
//   - Before it runs, each command is echoed as "$ " followed by its text,
//     all of its lines for a multi-line command, each line colored on its
//     own when Color is set. The echo shows the command as written (with
//     $VAR, never a variable's value).
//   - Each command runs through eval of its quoted text, so an unbalanced
//     quote in one command is a syntax error of that command (exit 2)
//     instead of swallowing the rest of the script.
//   - The whole script is one { … } block with stdin from /dev/null: the
//     shell reads all of it before running anything, so it may be fed on
//     stdin, and no command can read the script as its own input.
//
// Run the script as a file or from a pipe, never as a command-line
// argument: it can be larger than ARG_MAX.
func Generate(shell string, s Stage) (string, error) {
	var b strings.Builder
	switch shell {
	case "bash":
		b.WriteString("#!/usr/bin/env bash\n")
	case "sh":
		b.WriteString("#!/bin/sh\n")
	default:
		return "", fmt.Errorf("cannot generate a script for shell %q: berth supports \"bash\" and \"sh\"", shell)
	}
	fmt.Fprintf(&b, "# berth stage %s\n", comment(s.Name))
	if shell == "bash" {
		b.WriteString("set -eo pipefail\n")
	} else {
		b.WriteString("set -e\n")
	}

	vars, files, err := resolve(s)
	if err != nil {
		return "", err
	}
	for i, c := range s.Commands {
		if strings.IndexByte(c, 0) >= 0 {
			return "", fmt.Errorf("stage %q: command %d contains a NUL byte, which a shell cannot run", s.Name, i+1)
		}
	}

	b.WriteString("{\n")
	if len(files) > 0 {
		writeFiles(&b, s.TmpDir, files)
	}
	for _, v := range vars {
		b.WriteString("export " + v.Key + "=" + quote(v.Value) + "\n")
	}
	if s.BuildDir != "" {
		b.WriteString("cd -- " + quote(s.BuildDir) + "\n")
	}
	for _, c := range s.Commands {
		if strings.TrimSpace(c) == "" {
			continue
		}
		writeEcho(&b, c, s.Color)
		b.WriteString("eval " + quote(c) + "\n")
	}
	b.WriteString("} </dev/null\n")
	return b.String(), nil
}

// file is a file variable's content and where it goes.
type file struct {
	path, content string
}

// resolve checks the stage's variables and returns what to export (file
// variables already holding their paths) and the files to write.
func resolve(s Stage) ([]Variable, []file, error) {
	lookup := make(map[string]string, len(s.Variables))
	for _, v := range s.Variables {
		if !isName(v.Key) {
			return nil, nil, fmt.Errorf("stage %q: variable %q is not a valid shell variable name "+
				"(use letters, digits and _, and do not start with a digit)", s.Name, v.Key)
		}
		if strings.IndexByte(v.Value, 0) >= 0 {
			return nil, nil, fmt.Errorf("stage %q: the value of variable %q contains a NUL byte, which a shell cannot hold", s.Name, v.Key)
		}
		if v.File {
			if !path.IsAbs(s.TmpDir) {
				return nil, nil, fmt.Errorf("stage %q: file variable %q needs an absolute TmpDir to be written to, got %q",
					s.Name, v.Key, s.TmpDir)
			}
			lookup[v.Key] = path.Join(s.TmpDir, v.Key)
		} else {
			lookup[v.Key] = v.Value
		}
	}
	find := func(name string) (string, bool) {
		v, ok := lookup[name]
		return v, ok
	}

	vars := make([]Variable, 0, len(s.Variables))
	var files []file
	for _, v := range s.Variables {
		value := v.Value
		if !v.Raw {
			value = Expand(value, find)
		}
		if v.File {
			p := path.Join(s.TmpDir, v.Key)
			files = append(files, file{path: p, content: value})
			value = p
		}
		v.Value = value
		vars = append(vars, v)
	}
	return vars, files, nil
}

// writeFiles writes the file variables in a subshell under umask 077 and
// sets the traps that remove them.
func writeFiles(b *strings.Builder, dir string, files []file) {
	rm := "rm -f --"
	for _, f := range files {
		rm += " " + quote(f.path)
	}
	b.WriteString("trap " + quote(rm) + " EXIT\n")
	b.WriteString("trap 'exit 129' HUP\ntrap 'exit 130' INT\ntrap 'exit 143' TERM\n")
	b.WriteString("(\numask 077\n")
	b.WriteString("mkdir -p -- " + quote(dir) + "\n")
	for _, f := range files {
		// Remove first: an existing file would keep its old mode.
		b.WriteString("rm -f -- " + quote(f.path) + "\n")
		b.WriteString("printf '%s' " + quote(f.content) + " >" + quote(f.path) + "\n")
	}
	b.WriteString(")\n")
}

// writeEcho prints a command before it runs: "$ " and its first line, then
// its further lines, without a trailing empty line.
func writeEcho(b *strings.Builder, command string, color bool) {
	lines := strings.Split(strings.TrimRight(command, "\r\n"), "\n")
	if color {
		// printf repeats its format for every argument: each line is
		// colored on its own.
		b.WriteString(`printf '\033[32;1m%s\033[0;m\n'`)
	} else {
		b.WriteString(`printf '%s\n'`)
	}
	for i, l := range lines {
		if i == 0 {
			l = "$ " + l
		}
		b.WriteString(" " + quote(l))
	}
	b.WriteString("\n")
}

// quote returns s as one single-quoted shell word that stands for exactly
// the bytes of s.
func quote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// isName reports whether s is a valid shell variable name.
func isName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '_', c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// comment makes s safe to put in a one-line shell comment.
func comment(s string) string {
	return strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return '?'
		}
		return r
	}, s)
}
