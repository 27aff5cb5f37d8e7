package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"

	"github.com/berthci/berth/plugins"
	"github.com/berthci/berth/sdk"
)

// discover finds the executors: the built-ins and those in the plugin
// folders.
func discover(pluginDir string, log *slog.Logger) (map[string]plugins.Plugin, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("finding berth's own executable: %w", err)
	}
	names := make([]string, 0)
	for n := range builtins() {
		names = append(names, n)
	}
	dirs := plugins.SearchDirs(pluginDir, os.Getenv)
	return plugins.Discover(dirs, self, names, func(n string) []string { return []string{serveFlag, n} }, log), nil
}

func pluginsCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("plugins: say list or inspect NAME")
	}
	fs := flag.NewFlagSet("berth plugins "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	pluginDir := fs.String("plugin-dir", "", "look for executor plugins in this folder first")
	logLevel := fs.String("log-level", "warn", "log level: debug, info, warn, error")
	pos, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return err
	}
	log, err := newLogger(stderr, *logLevel)
	if err != nil {
		return err
	}
	found, err := discover(*pluginDir, log)
	if err != nil {
		return err
	}
	switch args[0] {
	case "list":
		return listPlugins(ctx, found, stdout, log)
	case "inspect":
		if len(pos) != 1 {
			return fmt.Errorf("plugins inspect: name one executor (have: %s)", strings.Join(plugins.Names(found), ", "))
		}
		p, ok := found[pos[0]]
		if !ok {
			return fmt.Errorf("no executor %q (have: %s)", pos[0], strings.Join(plugins.Names(found), ", "))
		}
		return inspectPlugin(ctx, p, stdout, log)
	default:
		return fmt.Errorf("plugins: unknown subcommand %q (list, inspect)", args[0])
	}
}

func listPlugins(ctx context.Context, found map[string]plugins.Plugin, stdout io.Writer, log *slog.Logger) error {
	names := plugins.Names(found)
	type row struct {
		info sdk.Info
		err  error
	}
	rows := make([]row, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Go(func() {
			inst, err := plugins.Start(ctx, found[n], plugins.StartOptions{Log: log})
			if err != nil {
				rows[i].err = err
				return
			}
			rows[i].info = inst.Info()
			inst.Kill()
		})
	}
	wg.Wait()
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tVERSION\tPROTOCOL\tSOURCE\tPATH\tCAPABILITIES")
	failed := 0
	for i, n := range names {
		p := found[n]
		src := "external"
		if p.Builtin {
			src = "builtin"
		}
		if rows[i].err != nil {
			failed++
			fmt.Fprintf(tw, "%s\t-\t-\t%s\t%s\tERROR: %v\n", n, src, p.Path, rows[i].err)
			continue
		}
		info := rows[i].info
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", n, info.Version, info.ProtocolVersion, src, p.Path, capabilities(info.Capabilities))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d executor plugins did not start", failed, len(names))
	}
	return nil
}

func capabilities(c sdk.Capabilities) string {
	var out []string
	for _, f := range []struct {
		on   bool
		name string
	}{
		{c.Image, "image"}, {c.Services, "services"}, {c.CancelGracefully, "cancel-gracefully"},
		{c.OneShot, "one-shot"}, {c.Interactive, "interactive"}, {c.Isolated, "isolated"},
	} {
		if f.on {
			out = append(out, f.name)
		}
	}
	if len(c.Shells) > 0 {
		out = append(out, "shells="+strings.Join(c.Shells, "/"))
	}
	return strings.Join(out, ",")
}

func inspectPlugin(ctx context.Context, p plugins.Plugin, stdout io.Writer, log *slog.Logger) error {
	inst, err := plugins.Start(ctx, p, plugins.StartOptions{Log: log})
	if err != nil {
		return err
	}
	defer inst.Kill()
	info := inst.Info()
	fmt.Fprintf(stdout, "%s %s (executor protocol %d) — %s\n", info.Name, info.Version, info.ProtocolVersion, p.Path)
	if info.Description != "" {
		fmt.Fprintln(stdout, info.Description)
	}
	fmt.Fprintf(stdout, "capabilities: %s\n\n", capabilities(info.Capabilities))
	fields := slices.Clone(info.Config)
	if len(fields) == 0 {
		fmt.Fprintln(stdout, "This executor has no settings.")
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "SETTING\tTYPE\tDEFAULT\tREQUIRED\tSECRET\tFLAG\tDESCRIPTION\n")
	for _, f := range fields {
		def := f.Default
		if f.Secret && def != "" {
			def = "(set)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t--%s\t%s\n", f.Name, f.Type, orDash(def), yesNo(f.Required), yesNo(f.Secret), flagName(info.Name, f.Name), f.Description)
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
