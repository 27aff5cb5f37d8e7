// Package stepwrap is the step wrapper berth's container executors
// (docker, kubernetes) run each step under: a POSIX sh script that makes
// the step the leader of its own process group inside the container, kills
// what the step leaves behind, and signals the group on cancel (see
// step.sh for its modes).
package stepwrap

import _ "embed"

//go:embed step.sh
var script string

// Command returns the argv of an exec that runs the wrapper in one of its
// modes. The wrapper's text travels on the command line, so nothing has to
// be copied into the container first.
//
//	Command("run", shell, scriptPath, pidPath, dir, oomHint)
//	Command("signal", "TERM", pidPath)
func Command(args ...string) []string {
	return append([]string{"sh", "-c", `BERTH_STEP_SH=$1; shift; eval "$BERTH_STEP_SH"`, "berth-step", script}, args...)
}
