package script

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// result is how a script run ended.
type result struct {
	code           int
	stdout, stderr string
}

// run generates the stage's script for shell and runs it with the real
// /bin/bash or /bin/sh, from a file or, with stdin set, fed on stdin.
func run(t *testing.T, shell string, s Stage, stdin bool) result {
	t.Helper()
	src, err := Generate(shell, s)
	if err != nil {
		t.Fatalf("Generate(%q): %v", shell, err)
	}
	var cmd *exec.Cmd
	if stdin {
		cmd = exec.Command("/bin/"+shell, "-s")
		cmd.Stdin = strings.NewReader(src)
	} else {
		file := filepath.Join(t.TempDir(), "script."+shell)
		if err := os.WriteFile(file, []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd = exec.Command("/bin/"+shell, file)
	}
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "LC_ALL=C"}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("running the %s script: %v", shell, err)
	}
	return result{code: cmd.ProcessState.ExitCode(), stdout: stdout.String(), stderr: stderr.String()}
}

func TestGenerateExitCodes(t *testing.T) {
	tests := []struct {
		name     string
		commands []string
		// per shell: exit code and output
		want map[string]result
	}{
		{
			name:     "all succeed",
			commands: []string{"echo one", "echo two"},
			want:     both(result{0, "$ echo one\none\n$ echo two\ntwo\n", ""}),
		},
		{
			name:     "false fails with 1",
			commands: []string{"false"},
			want:     both(result{1, "$ false\n", ""}),
		},
		{
			name:     "exit 7",
			commands: []string{"echo before", "exit 7", "echo after"},
			want:     both(result{7, "$ echo before\nbefore\n$ exit 7\n", ""}),
		},
		{
			name:     "failing middle command stops the rest",
			commands: []string{"echo one", "sh -c 'exit 3'", "echo three"},
			want:     both(result{3, "$ echo one\none\n$ sh -c 'exit 3'\n", ""}),
		},
		{
			name:     "failure inside a multi-line command",
			commands: []string{"echo a\nfalse\necho b", "echo c"},
			want:     both(result{1, "$ echo a\nfalse\necho b\na\n", ""}),
		},
		{
			name:     "multi-line compound command",
			commands: []string{"if true; then\n  echo yes\nfi\n"},
			want:     both(result{0, "$ if true; then\n  echo yes\nfi\nyes\n", ""}),
		},
		{
			name:     "pipefail in bash only",
			commands: []string{"false | true", "echo after"},
			want: map[string]result{
				"bash": {1, "$ false | true\n", ""},
				"sh":   {0, "$ false | true\n$ echo after\nafter\n", ""},
			},
		},
		{
			name:     "unbalanced quote fails only its own command",
			commands: []string{`echo "open`, "echo never"},
			want:     both(result{2, "$ echo \"open\n", ""}),
		},
		{
			name:     "empty commands skipped",
			commands: []string{"", "  \n", "echo x"},
			want:     both(result{0, "$ echo x\nx\n", ""}),
		},
		{
			name:     "functions and directory changes persist between commands",
			commands: []string{"f() { echo \"in f: $1\"; }", "cd /", "f \"$(pwd)\""},
			want:     both(result{0, "$ f() { echo \"in f: $1\"; }\n$ cd /\n$ f \"$(pwd)\"\nin f: /\n", ""}),
		},
	}
	for _, tt := range tests {
		for _, shell := range []string{"bash", "sh"} {
			t.Run(tt.name+"/"+shell, func(t *testing.T) {
				got := run(t, shell, Stage{Name: "step_script", Commands: tt.commands}, false)
				want := tt.want[shell]
				if got.code != want.code || got.stdout != want.stdout {
					t.Errorf("exit %d, stdout %q; want exit %d, stdout %q (stderr %q)",
						got.code, got.stdout, want.code, want.stdout, got.stderr)
				}
			})
		}
	}
}

func both(r result) map[string]result { return map[string]result{"bash": r, "sh": r} }

func TestGenerateEchoesCommandsNotValues(t *testing.T) {
	tests := []struct {
		name  string
		color bool
		want  string
	}{
		{"plain", false, "$ echo \"${#SECRET} $SECRET_LEN\"\n9 9\n$ printf '%s\\n' 1 \\\n  2\n1\n2\n"},
		{"color", true, "\x1b[32;1m$ echo \"${#SECRET} $SECRET_LEN\"\x1b[0;m\n9 9\n" +
			"\x1b[32;1m$ printf '%s\\n' 1 \\\x1b[0;m\n\x1b[32;1m  2\x1b[0;m\n1\n2\n"},
	}
	for _, tt := range tests {
		for _, shell := range []string{"bash", "sh"} {
			t.Run(tt.name+"/"+shell, func(t *testing.T) {
				s := Stage{
					Commands: []string{`echo "${#SECRET} $SECRET_LEN"`, "printf '%s\\n' 1 \\\n  2\n"},
					Variables: []Variable{
						{Key: "SECRET", Value: "topsecret", Masked: true},
						{Key: "SECRET_LEN", Value: "9"},
					},
					Color: tt.color,
				}
				got := run(t, shell, s, false)
				if got.code != 0 || got.stdout != tt.want {
					t.Errorf("exit %d, stdout %q; want 0, %q (stderr %q)", got.code, got.stdout, tt.want, got.stderr)
				}
				if strings.Contains(got.stdout+got.stderr, "topsecret") {
					t.Errorf("the secret's value was printed")
				}
			})
		}
	}
}

func TestGenerateExportsExactValues(t *testing.T) {
	// Values that quoting must carry byte for byte.
	nastyValues := map[string]string{
		"EMPTY":        "",
		"QUOTE":        "it's",
		"QUOTES":       `'"''"'`,
		"NEWLINES":     "line one\nline two\n\n",
		"CRLF":         "a\r\nb\r",
		"DOLLAR":       "$HOME ${PATH} $$ $1",
		"SUBST":        "$(echo no) `echo no`",
		"BACKSLASH":    `back\slash \n \\ \'`,
		"UNICODE":      "ü 日本語 ✓ \u200b",
		"CONTROL":      "\x01\x1b[0m\x7f\t",
		"DASH":         "-n -e --",
		"PERCENT":      "%s %d %%",
		"GLOB":         "* ? [a-z] ~",
		"BANG":         "!! !$ !event",
		"SPACES":       "  lead and trail  ",
		"HIGH_BYTES":   "\xff\xfe\x80",
		"SEMICOLON":    "a; echo no; b && c || d | e > f",
		"BRACE_EXPAND": "{a,b} {1..3}",
	}
	for _, shell := range []string{"bash", "sh"} {
		t.Run(shell, func(t *testing.T) {
			out := t.TempDir()
			s := Stage{Variables: []Variable{{Key: "OUT", Value: out}}}
			for key, value := range nastyValues {
				s.Variables = append(s.Variables, Variable{Key: key, Value: value, Raw: true})
				s.Commands = append(s.Commands, `printf '%s' "$`+key+`" >"$OUT/`+key+`"`)
			}
			if got := run(t, shell, s, false); got.code != 0 {
				t.Fatalf("exit %d, stderr %q", got.code, got.stderr)
			}
			for key, want := range nastyValues {
				got, err := os.ReadFile(filepath.Join(out, key))
				if err != nil {
					t.Fatal(err)
				}
				if string(got) != want {
					t.Errorf("%s = %q, want %q", key, got, want)
				}
			}
		})
	}
}

func TestGenerateExpandsNonRawValues(t *testing.T) {
	tmp := "/tmp/berth-expand-test"
	vars := []Variable{
		{Key: "A", Value: "alpha"},
		{Key: "B", Value: "$A-${A}_$$A-$UNKNOWN-${A}x"},
		{Key: "RAW", Value: "$A ${A}", Raw: true},
		{Key: "LATER_REF", Value: "[$C]"},
		{Key: "C", Value: "$A"},
		{Key: "FILE_REF", Value: "path=$CERT"},
		{Key: "CERT", Value: "pem for $A", File: true},
		{Key: "OVERRIDDEN", Value: "first"},
		{Key: "OVER_REF", Value: "$OVERRIDDEN"},
		{Key: "OVERRIDDEN", Value: "second"},
	}
	want := map[string]string{
		"B":          "alpha-alpha_$A--alphax",
		"RAW":        "$A ${A}",
		"LATER_REF":  "[$A]", // one level deep, like GitLab Runner
		"C":          "alpha",
		"FILE_REF":   "path=" + tmp + "/CERT",
		"CERT":       tmp + "/CERT",
		"OVER_REF":   "second",
		"OVERRIDDEN": "second",
	}
	for _, shell := range []string{"bash", "sh"} {
		t.Run(shell, func(t *testing.T) {
			out := t.TempDir()
			s := Stage{TmpDir: filepath.Join(out, "tmp"), Variables: append([]Variable{{Key: "OUT", Value: out}}, vars...)}
			for key := range want {
				s.Commands = append(s.Commands, `printf '%s' "$`+key+`" >"$OUT/`+key+`"`)
			}
			s.Commands = append(s.Commands, `cp "$CERT" "$OUT/cert-content"`)
			if got := run(t, shell, s, false); got.code != 0 {
				t.Fatalf("exit %d, stderr %q", got.code, got.stderr)
			}
			for key, w := range want {
				w = strings.ReplaceAll(w, tmp, s.TmpDir)
				got, err := os.ReadFile(filepath.Join(out, key))
				if err != nil {
					t.Fatal(err)
				}
				if string(got) != w {
					t.Errorf("%s = %q, want %q", key, got, w)
				}
			}
			if got, _ := os.ReadFile(filepath.Join(out, "cert-content")); string(got) != "pem for alpha" {
				t.Errorf("file variable content = %q, want %q (expanded)", got, "pem for alpha")
			}
		})
	}
}

func TestGenerateFileVariables(t *testing.T) {
	content := "-----BEGIN KEY-----\nit's $HOME `x`\n-----END KEY-----\n"
	tests := []struct {
		name     string
		commands []string
		wantCode int
	}{
		{"success", []string{"true"}, 0},
		{"failure", []string{"exit 5", "true"}, 5},
		{"terminated", []string{"kill -TERM $$", "true"}, 143},
	}
	for _, tt := range tests {
		for _, shell := range []string{"bash", "sh"} {
			t.Run(tt.name+"/"+shell, func(t *testing.T) {
				out := t.TempDir()
				tmp := filepath.Join(out, "missing", "tmp")
				commands := append([]string{
					`stat -c '%a' "$KEY" >"$OUT/mode"`,
					`stat -c '%a' "$(dirname "$KEY")" >"$OUT/dirmode"`,
					`printf '%s' "$KEY" >"$OUT/path"`,
					`cp "$KEY" "$OUT/content"`,
					`umask >"$OUT/umask"`,
				}, tt.commands...)
				s := Stage{
					Commands: commands,
					TmpDir:   tmp,
					Variables: []Variable{
						{Key: "OUT", Value: out},
						{Key: "KEY", Value: content, File: true, Raw: true},
					},
				}
				got := run(t, shell, s, false)
				if got.code != tt.wantCode {
					t.Fatalf("exit %d, want %d (stderr %q)", got.code, tt.wantCode, got.stderr)
				}
				read := func(name string) string {
					b, err := os.ReadFile(filepath.Join(out, name))
					if err != nil {
						t.Fatal(err)
					}
					return string(b)
				}
				if m := read("mode"); m != "600\n" {
					t.Errorf("file mode while running = %q, want 600", m)
				}
				if m := read("dirmode"); m != "700\n" {
					t.Errorf("created TmpDir mode = %q, want 700", m)
				}
				if p := read("path"); p != filepath.Join(tmp, "KEY") {
					t.Errorf("variable holds %q, want %q", p, filepath.Join(tmp, "KEY"))
				}
				if c := read("content"); c != content {
					t.Errorf("file content = %q, want %q", c, content)
				}
				if u := read("umask"); u == "0077\n" || u == "077\n" {
					t.Errorf("commands run with umask %q: the 077 for the files leaked", u)
				}
				if _, err := os.Stat(filepath.Join(tmp, "KEY")); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("file variable still there after the script exited: %v", err)
				}
			})
		}
	}
}

func TestGenerateFileVariableReplacesOpenFile(t *testing.T) {
	for _, shell := range []string{"bash", "sh"} {
		t.Run(shell, func(t *testing.T) {
			out := t.TempDir()
			tmp := filepath.Join(out, "tmp")
			if err := os.Mkdir(tmp, 0o755); err != nil {
				t.Fatal(err)
			}
			// A file left by an earlier, killed run, readable by everyone.
			if err := os.WriteFile(filepath.Join(tmp, "KEY"), []byte("stale and much longer"), 0o644); err != nil {
				t.Fatal(err)
			}
			s := Stage{
				Commands:  []string{`stat -c '%a' "$KEY" >"$OUT/mode"`, `cp "$KEY" "$OUT/content"`},
				TmpDir:    tmp,
				Variables: []Variable{{Key: "OUT", Value: out}, {Key: "KEY", Value: "new", File: true}},
			}
			if got := run(t, shell, s, false); got.code != 0 {
				t.Fatalf("exit %d, stderr %q", got.code, got.stderr)
			}
			if b, _ := os.ReadFile(filepath.Join(out, "mode")); string(b) != "600\n" {
				t.Errorf("mode = %q, want 600", b)
			}
			if b, _ := os.ReadFile(filepath.Join(out, "content")); string(b) != "new" {
				t.Errorf("content = %q, want %q", b, "new")
			}
		})
	}
}

func TestGenerateBuildDir(t *testing.T) {
	for _, shell := range []string{"bash", "sh"} {
		t.Run(shell, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "it's a dir")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			got := run(t, shell, Stage{BuildDir: dir, Commands: []string{"pwd"}}, false)
			if got.code != 0 || got.stdout != "$ pwd\n"+dir+"\n" {
				t.Errorf("exit %d, stdout %q; want the build dir %q", got.code, got.stdout, dir)
			}
			got = run(t, shell, Stage{BuildDir: filepath.Join(dir, "missing"), Commands: []string{"echo never"}}, false)
			if got.code == 0 || strings.Contains(got.stdout, "never") {
				t.Errorf("a missing build dir: exit %d, stdout %q; want a failure before any command", got.code, got.stdout)
			}
		})
	}
}

func TestGenerateLargeScriptOnStdin(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", 100<<10/16) // 100 KB value
	var commands []string
	for i := range 2000 {
		commands = append(commands, "x=$((x+1)) # padding "+strings.Repeat(string(rune('a'+i%26)), 80))
	}
	commands = append(commands, `[ "$BIG" = "$(printf '%s' "$BIG")" ] && echo "${#BIG} $x"`, "cat", "echo after cat")
	for _, shell := range []string{"bash", "sh"} {
		for _, stdin := range []bool{false, true} {
			name := shell + "/file"
			if stdin {
				name = shell + "/stdin"
			}
			t.Run(name, func(t *testing.T) {
				s := Stage{Commands: commands, Variables: []Variable{{Key: "BIG", Value: big}}}
				src, err := Generate(shell, s)
				if err != nil {
					t.Fatal(err)
				}
				if len(src) < 200<<10 {
					t.Fatalf("script is %d bytes, want at least 200 KB", len(src))
				}
				got := run(t, shell, s, stdin)
				if got.code != 0 || !strings.HasSuffix(got.stdout, "102400 2000\n$ cat\n$ echo after cat\nafter cat\n") {
					tail := got.stdout[max(0, len(got.stdout)-200):]
					t.Errorf("exit %d, stdout ends %q, stderr %q", got.code, tail, got.stderr)
				}
			})
		}
	}
}

// TestGenerateCommandsDoNotReadStdin gives the shell an input of its own
// (as an executor that forgot to close stdin would): a command reading
// stdin must see nothing of it.
func TestGenerateCommandsDoNotReadStdin(t *testing.T) {
	for _, shell := range []string{"bash", "sh"} {
		t.Run(shell, func(t *testing.T) {
			src, err := Generate(shell, Stage{Commands: []string{"cat", "echo done"}})
			if err != nil {
				t.Fatal(err)
			}
			file := filepath.Join(t.TempDir(), "script")
			if err := os.WriteFile(file, []byte(src), 0o600); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command("/bin/"+shell, file)
			cmd.Stdin = strings.NewReader("input meant for nobody\n")
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("%v (stdout %q)", err, out)
			}
			if string(out) != "$ cat\n$ echo done\ndone\n" {
				t.Errorf("stdout %q: a command read the shell's stdin", out)
			}
		})
	}
}

func TestGenerateErrors(t *testing.T) {
	tests := []struct {
		name  string
		shell string
		stage Stage
		want  string // must appear in the error
	}{
		{"unknown shell", "zsh", Stage{}, `"zsh"`},
		{"empty shell", "", Stage{}, `""`},
		{"key starts with digit", "bash", Stage{Variables: []Variable{{Key: "1ABC"}}}, `"1ABC"`},
		{"key with dash", "sh", Stage{Variables: []Variable{{Key: "MY-VAR"}}}, `"MY-VAR"`},
		{"key with space", "bash", Stage{Variables: []Variable{{Key: "A B"}}}, `"A B"`},
		{"empty key", "bash", Stage{Variables: []Variable{{Key: ""}}}, `variable ""`},
		{"unicode key", "bash", Stage{Variables: []Variable{{Key: "ÄPFEL"}}}, `"ÄPFEL"`},
		{"key injection", "bash", Stage{Variables: []Variable{{Key: "X=1; rm -rf /; Y"}}}, `"X=1; rm -rf /; Y"`},
		{"NUL in value", "bash", Stage{Variables: []Variable{{Key: "NUL", Value: "a\x00b"}}}, `"NUL"`},
		{"NUL in command", "sh", Stage{Name: "step_script", Commands: []string{"ok", "a\x00b"}}, "command 2"},
		{"file variable without TmpDir", "bash", Stage{Variables: []Variable{{Key: "CERT", File: true}}}, `"CERT"`},
		{"file variable with relative TmpDir", "sh", Stage{TmpDir: "tmp", Variables: []Variable{{Key: "CERT", File: true}}}, `"tmp"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, err := Generate(tt.shell, tt.stage)
			if err == nil {
				t.Fatalf("no error; script:\n%s", src)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not name %s", err, tt.want)
			}
		})
	}
}

func TestExpand(t *testing.T) {
	vars := map[string]string{"A": "alpha", "AB": "ab", "EMPTY": "", "REF": "$A"}
	lookup := func(name string) (string, bool) {
		v, ok := vars[name]
		return v, ok
	}
	tests := []struct{ in, want string }{
		{"plain", "plain"},
		{"$A", "alpha"},
		{"${A}", "alpha"},
		{"$AB", "ab"},
		{"${A}B", "alphaB"},
		{"$A.B", "alpha.B"},
		{"x$EMPTY-y", "x-y"},
		{"$UNKNOWN", ""},
		{"${UNKNOWN}x", "x"},
		{"$$", "$"},
		{"$$A", "$A"},
		{"$$$A", "$alpha"},
		{"${$}", "$"},
		{"$REF", "$A"}, // not expanded again
		{"cost: 5$", "cost: 5$"},
		{"$ A", "$ A"},
		{"$(cmd) `cmd`", "$(cmd) `cmd`"},
		{`\$A`, `\alpha`},
		{"'$A'", "'alpha'"},
		{"$1$?$#$*$@$!$-$0", ""},
		{"${A:-default}", ""},
		{"${}x", "x"},
		{"${A", "A"},
		{"ü$A✓", "üalpha✓"},
	}
	for _, tt := range tests {
		if got := Expand(tt.in, lookup); got != tt.want {
			t.Errorf("Expand(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
