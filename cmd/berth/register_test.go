package main

import (
	"bufio"
	"io"
	"strings"
	"testing"
)

func TestPrompterAsksOnlyForMissingValues(t *testing.T) {
	tests := []struct {
		name, input, have, def, want string
		on                           bool
	}{
		{"asks when empty", "https://gitlab.example.com\n", "", "", "https://gitlab.example.com", true},
		{"keeps a given value", "ignored\n", "given", "", "given", true},
		{"empty answer takes the default", "\n", "", "host-1", "host-1", true},
		{"last line without newline", "abc", "", "", "abc", true},
		{"off: never asks", "x\n", "", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &prompter{in: bufio.NewReader(strings.NewReader(tt.input)), out: io.Discard, on: tt.on}
			v := tt.have
			if err := p.need(&v, "Question", tt.def); err != nil {
				t.Fatal(err)
			}
			if v != tt.want {
				t.Errorf("got %q, want %q", v, tt.want)
			}
		})
	}
	p := &prompter{in: bufio.NewReader(strings.NewReader("")), out: io.Discard, on: true}
	var v string
	if err := p.need(&v, "Enter the URL", ""); err == nil || !strings.Contains(err.Error(), "Enter the URL") {
		t.Errorf("end of input: %v", err)
	}
}
