package main

import (
	"strings"
	"testing"

	"github.com/berthci/berth/plugins"
	"github.com/berthci/berth/sdk"
)

func TestRunnerPins(t *testing.T) {
	builtin := plugins.Plugin{Name: "shell", Path: "/usr/bin/berth", Builtin: true}
	byHand := plugins.Plugin{Name: "foo", Path: "/nonexistent/berth-executor-foo"}
	tests := []struct {
		name         string
		p            plugins.Plugin
		version, sha string
		info         sdk.Info
		wantErr      string
		wantStartSHA string
	}{
		{name: "no pins", p: builtin, info: sdk.Info{Version: "0.1.0"}},
		{name: "version satisfied", p: builtin, version: "~0.1", info: sdk.Info{Version: "0.1.3"}},
		{name: "version not satisfied", p: builtin, version: "~1.2", info: sdk.Info{Version: "0.1.0"}, wantErr: "0.1.0"},
		{name: "sha pin on a built-in", p: builtin, sha: strings.Repeat("a", 64), wantErr: "built into berth"},
		{name: "sha pin on a plugin put there by hand is checked at start", p: byHand, sha: strings.Repeat("b", 64), wantStartSHA: strings.Repeat("b", 64)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var opts plugins.StartOptions
			err := pinStart(tt.p, tt.sha, &opts)
			if err == nil {
				err = checkPins(tt.p, tt.info, tt.version, tt.sha)
			}
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("error %v, want one saying %q", err, tt.wantErr)
			}
			if opts.SHA256 != tt.wantStartSHA {
				t.Errorf("start pin %q, want %q", opts.SHA256, tt.wantStartSHA)
			}
		})
	}
}
