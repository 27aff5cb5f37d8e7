// Package stepwrap is the step wrapper berth's container executors
// (docker, kubernetes) run each step under: a POSIX sh script that makes
// the step the leader of its own process group inside the container, kills
// what the step leaves behind, and signals the group on cancel (see
// step.sh for its modes); and the keep-alive those containers run as their
// main process while steps come and go.
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

// Env names the environment variable a container can be given the
// wrapper's text in (Script), for CommandFromEnv.
const Env = "BERTH_STEP_SH"

// Script is the wrapper's text.
func Script() string { return script }

// CommandFromEnv is Command for a container that has the wrapper in its
// environment (Env): the exec's command line stays short, where Command's
// carries the wrapper's ≈ 12 KB on every exec — for Kubernetes, in the
// URL of each exec request, which proxies may cap and audit logs record.
// Without the variable it fails (exit 125) rather than run nothing.
func CommandFromEnv(args ...string) []string {
	return append([]string{"sh", "-c", fromEnv, "berth-step"}, args...)
}

const fromEnv = `[ -n "${` + Env + `-}" ] || { echo "berth: the container has no step wrapper (environment variable ` + Env + `)" >&2; exit 125; }
eval "$` + Env + `"`

// ReadyLine is KeepAlive's first line on stdout: an executor that sees it
// knows the container's main process runs (a job's entrypoint, which runs
// first, ran it rather than ending the container).
const ReadyLine = "berth-job-container-ready"

// keepAliveScript only waits: as PID 1 it reaps the orphans of killed
// steps; it ends at once on SIGTERM or SIGINT. Without sleep in the image
// it waits reading its stdin, which the container keeps open.
const keepAliveScript = `trap 'exit 0' TERM INT
echo ` + ReadyLine + `
if command -v sleep >/dev/null 2>&1; then
	while :; do sleep 3600 & wait $!; done
fi
while read -r _; do :; done`

// KeepAlive returns the argv of a job container's main process for the
// executors that run each step with an exec into a long-lived container.
// The container must keep its stdin open (see keepAliveScript).
func KeepAlive() []string { return []string{"sh", "-c", keepAliveScript} }
