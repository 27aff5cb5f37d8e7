package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/berthci/berth/sdk"
)

// parseInterspersed parses flags that may stand before, between or after
// positional arguments, and returns the positional ones. "--" ends flags.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if len(args) > 0 && len(rest) < len(args) && args[len(args)-len(rest)-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// flagName is the command-line flag of an executor's setting:
// --<executor>-<setting with dashes>.
func flagName(executor, setting string) string {
	return executor + "-" + strings.ReplaceAll(setting, "_", "-")
}

// settingFlags registers one flag per setting of the executor's schema and
// returns a function that yields the settings given on the command line.
func settingFlags(fs *flag.FlagSet, info sdk.Info) func() map[string]any {
	set := map[string]any{}
	for _, f := range info.Config {
		name := flagName(info.Name, f.Name)
		help := f.Description
		if f.Default != "" && !f.Secret {
			help += " (default " + f.Default + ")"
		}
		help += " [" + f.Type + "]"
		if f.Type == sdk.FieldBool {
			fs.Var(boolFlag{set: set, key: f.Name}, name, help) // a bare --flag means true
			continue
		}
		fs.Func(name, help, func(v string) error {
			set[f.Name] = v
			return nil
		})
	}
	return func() map[string]any { return set }
}

type boolFlag struct {
	set map[string]any
	key string
}

func (b boolFlag) String() string { return "" }
func (b boolFlag) Set(v string) error {
	b.set[b.key] = v
	return nil
}
func (b boolFlag) IsBoolFlag() bool { return true }

// loadExecutorTable reads the executor's table from a config.toml in
// gitlab-runner's shape: either [runners.<executor>] at the top, or the
// first [[runners]] entry whose executor is it (its [runners.<executor>]).
func loadExecutorTable(path, executor string) (map[string]any, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	var doc map[string]any
	if _, err := toml.Decode(string(data), &doc); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("%s:%d:%d: %s", path, pe.Position.Line, pe.Position.Col, pe.Message)
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	switch r := doc["runners"].(type) {
	case nil:
		return map[string]any{}, nil
	case map[string]any:
		return table(path, r, executor)
	case []map[string]any:
		for _, runner := range r {
			if e, _ := runner["executor"].(string); e == executor {
				return table(path, runner, executor)
			}
		}
		return map[string]any{}, nil
	default:
		return nil, fmt.Errorf("%s: runners must be a table or an array of tables", path)
	}
}

func table(path string, parent map[string]any, executor string) (map[string]any, error) {
	switch t := parent[executor].(type) {
	case nil:
		return map[string]any{}, nil
	case map[string]any:
		return t, nil
	default:
		return nil, fmt.Errorf("%s: runners.%s must be a table", path, executor)
	}
}
