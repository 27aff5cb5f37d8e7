package sshexec

import (
	"bytes"
	"testing"
)

func TestPreamble(t *testing.T) {
	const marker = "berth-stage-0123 "
	tests := []struct {
		name      string
		writes    []string
		wantPgid  int
		wantFound bool
		wantOut   string
	}{
		{"alone", []string{marker + "42\n"}, 42, true, ""},
		{"then output", []string{marker + "42\nerr 1\n", "err 2\n"}, 42, true, "err 1\nerr 2\n"},
		{"split", []string{"berth-st", "age-0123 4", "2\nx"}, 42, true, "x"},
		{"after chatter", []string{"motd line\n", "no newline:" + marker + "7\n"}, 7, true, "motd line\nno newline:"},
		{"none", []string{"sh: 1: cd: can't cd to /x\n"}, 0, false, ""},
		{"another nonce", []string{"berth-stage-9999 42\n"}, 0, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			p := newPreamble(marker, &out)
			for _, w := range tt.writes {
				if n, err := p.Write([]byte(w)); err != nil || n != len(w) {
					t.Fatalf("Write(%q) = %d, %v", w, n, err)
				}
			}
			pgid, found := p.group()
			if pgid != tt.wantPgid || found != tt.wantFound || out.String() != tt.wantOut {
				t.Errorf("group %d (found %v), output %q; want %d (%v), %q", pgid, found, out.String(), tt.wantPgid, tt.wantFound, tt.wantOut)
			}
			if !found && p.pending() != bytes.NewBufferString(joinAll(tt.writes)).String() {
				t.Errorf("pending %q, want everything written", p.pending())
			}
		})
	}
}

func joinAll(s []string) string {
	var b bytes.Buffer
	for _, x := range s {
		b.WriteString(x)
	}
	return b.String()
}
