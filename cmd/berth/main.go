// Command berth runs CI jobs through executor plugins.
//
//	berth exec [flags] [JOB...]     run a local .gitlab-ci.yml
//	berth plugins list              the executors berth can use
//	berth plugins inspect NAME      an executor's settings
//	berth version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/berthci/berth/docker"
	"github.com/berthci/berth/kubernetes"
	"github.com/berthci/berth/lambda"
	"github.com/berthci/berth/qemu"
	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/shell"
	sshexecutor "github.com/berthci/berth/ssh"
	"github.com/berthci/berth/virtualbox"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "0.1.0-dev"

// serveFlag is the hidden first argument with which berth serves one of
// its built-in executors as a plugin process.
const serveFlag = "__serve-executor"

// builtins are the executors compiled into berth. Each still runs as a
// plugin process of its own: berth re-executes itself to serve it.
func builtins() map[string]func() sdk.Executor {
	return map[string]func() sdk.Executor{
		"shell":      func() sdk.Executor { return shell.New() },
		"docker":     func() sdk.Executor { return docker.New() },
		"kubernetes": func() sdk.Executor { return kubernetes.New() },
		"lambda":     func() sdk.Executor { return lambda.New() },
		"qemu":       func() sdk.Executor { return qemu.New() },
		"ssh":        func() sdk.Executor { return sshexecutor.New() },
		"virtualbox": func() sdk.Executor { return virtualbox.New() },
	}
}

func main() {
	if len(os.Args) == 3 && os.Args[1] == serveFlag {
		newExec, ok := builtins()[os.Args[2]]
		if !ok {
			fmt.Fprintf(os.Stderr, "berth: no built-in executor %q\n", os.Args[2])
			os.Exit(2)
		}
		sdk.Serve(newExec())
		return
	}
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// exitError carries the exit code a command wants.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	var err error
	switch args[0] {
	case "exec":
		err = execCommand(ctx, args[1:], stdout, stderr)
	case "plugins":
		err = pluginsCommand(ctx, args[1:], stdout, stderr)
	case "register":
		err = registerCommand(ctx, args[1:], stdout, stderr)
	case "run":
		err = runCommand(ctx, args[1:], stdout, stderr)
	case "run-single":
		err = runSingleCommand(ctx, args[1:], stdout, stderr)
	case "verify":
		err = verifyCommand(ctx, args[1:], stdout, stderr)
	case "unregister":
		err = unregisterCommand(ctx, args[1:], stdout, stderr)
	case "list":
		err = listCommand(ctx, args[1:], stdout, stderr)
	case "lambda":
		err = lambdaCommand(ctx, args[1:], stdout, stderr)
	case "version", "--version":
		fmt.Fprintf(stdout, "berth %s (executor protocol %d)\n", version, sdk.ProtocolVersion)
	case "help", "-h", "--help":
		usage(stdout)
	default:
		fmt.Fprintf(stderr, "berth: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
	var ee exitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.code
	case errors.Is(err, flag.ErrHelp):
		return 0
	default:
		fmt.Fprintf(stderr, "berth: %v\n", err)
		return 1
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, strings.TrimLeft(`
berth runs CI jobs through executor plugins.

Usage:
  berth exec [-C DIR] [--executor NAME] [--plugin-dir DIR] [--config FILE] [JOB...]
                              run the jobs of a local .gitlab-ci.yml
  berth plugins list [--plugin-dir DIR]
                              list the executors berth can use
  berth plugins inspect NAME  show an executor's settings and their flags
  berth register [-c FILE] --url URL --token glrt-… --executor NAME [--EXECUTOR-SETTING …]
                              register a runner with GitLab (or --registration-token) into config.toml
  berth run [-c FILE]         take and run jobs for every runner of config.toml
  berth run-single --url URL --token TOKEN [--executor NAME] [--max-builds N]
                              take and run jobs for one runner given by flags
  berth verify [-c FILE] [--delete]
                              check the runners' tokens with GitLab
  berth unregister [-c FILE] (--name NAME | --url URL --token TOKEN | --all-runners)
  berth list [-c FILE]        list the runners of config.toml
  berth lambda package [-o function.zip] [--arch amd64|arm64]
                              build the AWS Lambda function that runs jobs (docs/lambda.md)
  berth version

Run 'berth exec --help' for exec's flags, including those of the chosen executor.
`, "\n"))
}

// newLogger returns berth's logger on stderr.
func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}
