package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/berthci/berth/host/config"
	"github.com/berthci/berth/host/gitlab"
	"github.com/berthci/berth/plugins"
	"github.com/berthci/berth/sdk"
)

// prompter asks for missing values when stdin is a terminal.
type prompter struct {
	in  *bufio.Reader
	out io.Writer
	on  bool
}

func stdinIsTerminal() bool {
	fi, err := os.Stdin.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// ask prints the question and returns the answer (def for an empty one).
func (p *prompter) ask(question, def string) (string, error) {
	if def != "" {
		fmt.Fprintf(p.out, "%s [%s]: ", question, def)
	} else {
		fmt.Fprintf(p.out, "%s: ", question)
	}
	line, err := p.in.ReadString('\n')
	if err != nil && !(errors.Is(err, io.EOF) && line != "") {
		return "", fmt.Errorf("reading the answer to %q: %w", question, err)
	}
	if v := strings.TrimSpace(line); v != "" {
		return v, nil
	}
	return def, nil
}

// need asks for *v when it is empty and prompting is on.
func (p *prompter) need(v *string, question, def string) error {
	if *v != "" || !p.on {
		return nil
	}
	a, err := p.ask(question, def)
	if err != nil {
		return err
	}
	*v = a
	return nil
}

// registerOptions are berth register's flags, named as gitlab-runner's.
type registerOptions struct {
	config, url, token, regToken, name, executor       string
	tagList, accessLevel, maintenanceNote, pluginDir   string
	buildsDir, cacheDir, shell                         string
	preGetSources, preBuild, postBuild                 string
	nonInteractive, runUntagged, locked, paused, leave bool
	maximumTimeout, limit, requestConcurrency, output  int
	env                                                stringList
}

func (o *registerOptions) register(fs *flag.FlagSet) {
	def := defaultConfigPath()
	fs.StringVar(&o.config, "config", def, "config file")
	fs.StringVar(&o.config, "c", def, "short for --config")
	fs.BoolVar(&o.nonInteractive, "non-interactive", false, "never ask; fail when a required value is missing")
	fs.BoolVar(&o.nonInteractive, "n", false, "short for --non-interactive")
	fs.StringVar(&o.url, "url", "", "GitLab's URL (e.g. https://gitlab.com/)")
	fs.StringVar(&o.url, "u", "", "short for --url")
	fs.StringVar(&o.token, "token", "", "the runner's authentication token (glrt-…) from GitLab")
	fs.StringVar(&o.token, "t", "", "short for --token")
	fs.StringVar(&o.regToken, "registration-token", "", "a legacy registration token (POST /runners)")
	fs.StringVar(&o.regToken, "r", "", "short for --registration-token")
	fs.StringVar(&o.name, "name", "", "the runner's name (default: the host name)")
	fs.StringVar(&o.name, "description", "", "same as --name")
	fs.StringVar(&o.executor, "executor", "", "the executor that runs the jobs")
	fs.StringVar(&o.pluginDir, "plugin-dir", "", "look for executor plugins in this folder first")
	fs.StringVar(&o.tagList, "tag-list", "", "comma-separated tags (registration token only)")
	fs.BoolVar(&o.runUntagged, "run-untagged", false, "take jobs without tags (registration token only)")
	fs.BoolVar(&o.locked, "locked", true, "lock the runner to its project (registration token only)")
	fs.StringVar(&o.accessLevel, "access-level", "", "not_protected or ref_protected (registration token only)")
	fs.IntVar(&o.maximumTimeout, "maximum-timeout", 0, "the longest job timeout, in seconds (registration token only)")
	fs.BoolVar(&o.paused, "paused", false, "register the runner paused (registration token only)")
	fs.StringVar(&o.maintenanceNote, "maintenance-note", "", "a note for GitLab's admins (registration token only)")
	fs.BoolVar(&o.leave, "leave-runner", false, "keep the runner in GitLab when the executor refuses its settings")
	fs.IntVar(&o.limit, "limit", 0, "jobs at once for this runner (0: concurrent only)")
	fs.IntVar(&o.requestConcurrency, "request-concurrency", 0, "job requests in flight at once (default 1)")
	fs.IntVar(&o.output, "output-limit", 0, "trace size limit in KiB (default 4096)")
	fs.StringVar(&o.buildsDir, "builds-dir", "", "where jobs are built")
	fs.StringVar(&o.cacheDir, "cache-dir", "", "where local caches are kept")
	fs.StringVar(&o.shell, "shell", "", "the shell of the jobs' scripts")
	fs.Var(&o.env, "env", "a KEY=VALUE variable for every job (repeatable)")
	fs.StringVar(&o.preGetSources, "pre-get-sources-script", "", "commands run before the job's script")
	fs.StringVar(&o.preBuild, "pre-build-script", "", "commands run before the job's script")
	fs.StringVar(&o.postBuild, "post-build-script", "", "commands run after the job's script")
}

// serverSideFlags are settings of a runner created in GitLab: a glrt-
// token refuses them.
var serverSideFlags = []string{"locked", "access-level", "run-untagged", "maximum-timeout", "paused", "tag-list", "maintenance-note"}

func registerCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	p := &prompter{in: bufio.NewReader(os.Stdin), out: stdout, on: stdinIsTerminal() && scanBool(args, "non-interactive", "n") == false}
	found, err := discover(scanValue(args, "plugin-dir"), log)
	if err != nil {
		return err
	}
	executor := scanValue(args, "executor")
	if err := p.need(&executor, "Enter an executor ("+strings.Join(plugins.Names(found), ", ")+")", ""); err != nil {
		return err
	}
	if executor == "" {
		return errors.New("register: --executor is required (have: " + strings.Join(plugins.Names(found), ", ") + ")")
	}
	plugin, ok := found[executor]
	if !ok {
		return fmt.Errorf("register: no executor %q (have: %s)", executor, strings.Join(plugins.Names(found), ", "))
	}
	pr := newProbe(ctx, plugin, log)
	defer pr.close()
	if pr.err != nil {
		return pr.err
	}
	fs := flag.NewFlagSet("berth register", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o registerOptions
	o.register(fs)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: berth register [flags]\n\nRegisters a runner with GitLab and adds it to config.toml.\n\nFlags (those starting with --%s- are the %s executor's settings):\n", executor, executor)
		fs.PrintDefaults()
	}
	flagSettings := settingFlags(fs, pr.info)
	if err := fs.Parse(args); err != nil {
		return err
	}
	o.executor = executor
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	if err := p.need(&o.url, "Enter the GitLab instance URL (for example, https://gitlab.com/)", ""); err != nil {
		return err
	}
	if o.token == "" && o.regToken == "" {
		if err := p.need(&o.token, "Enter the runner authentication token (glrt-…) or a registration token", ""); err != nil {
			return err
		}
	}
	host, _ := os.Hostname()
	if err := p.need(&o.name, "Enter a name for the runner", host); err != nil {
		return err
	}
	if o.name == "" {
		o.name = host
	}
	switch {
	case o.url == "":
		return errors.New("register: --url is required")
	case o.token == "" && o.regToken == "":
		return errors.New("register: --token (a glrt- token from GitLab) or --registration-token is required")
	}
	url, err := gitlab.CleanURL(o.url)
	if err != nil {
		return fmt.Errorf("register: %w", err)
	}

	// The executor's settings: flags, then prompts for required ones.
	settings := map[string]any{}
	for k, v := range flagSettings() {
		f := fieldOf(pr.info, k)
		settings[k] = typedSetting(f, fmt.Sprint(v))
	}
	for _, f := range pr.info.Config {
		if _, ok := settings[f.Name]; ok || !f.Required {
			continue
		}
		var v string
		if err := p.need(&v, fmt.Sprintf("Enter the %s executor's %s (%s)", executor, f.Name, f.Description), f.Default); err != nil {
			return err
		}
		if v == "" {
			return fmt.Errorf("register: the %s executor needs --%s", executor, flagName(executor, f.Name))
		}
		settings[f.Name] = typedSetting(f, v)
	}
	r := config.Runner{
		Name: o.name, URL: url, Executor: executor, Shell: o.shell, Limit: o.limit, RequestConcurrency: o.requestConcurrency,
		BuildsDir: o.buildsDir, CacheDir: o.cacheDir, Environment: o.env, OutputLimit: o.output,
		PreGetSourcesScript: o.preGetSources, PreBuildScript: o.preBuild, PostBuildScript: o.postBuild, ExecutorSettings: settings,
	}
	// The plugin checks its settings before anything is registered or
	// written.
	if err := pr.sup.Configure(ctx, executorSettings(r, pr.info)); err != nil {
		return fmt.Errorf("register: %w", err)
	}
	if err := (&config.Config{Runners: []config.Runner{{Name: r.Name, URL: url, Token: "x", Executor: executor, BuildsDir: r.BuildsDir, CacheDir: r.CacheDir, Environment: r.Environment}}}).Validate(); err != nil {
		return fmt.Errorf("register: %w", err)
	}

	systemID, err := gitlab.LoadSystemID(filepath.Join(filepath.Dir(o.config), gitlab.SystemIDFile))
	if err != nil {
		return err
	}
	client, err := gitlab.NewClient(url, gitlab.Options{UserAgent: userAgent(), Log: log})
	if err != nil {
		return err
	}
	info := featuresInfo(executor, pr.info)
	var creds gitlab.RunnerCredentials
	switch {
	case gitlab.IsCreatedRunnerToken(o.token) || o.regToken != "" && gitlab.IsCreatedRunnerToken(o.regToken):
		token := o.token
		if token == "" {
			token = o.regToken
			for _, f := range serverSideFlags {
				if set[f] {
					fmt.Fprintf(stderr, "WARNING: --%s is a setting of the runner in GitLab; ignored with a glrt- token\n", f)
				}
			}
		} else {
			for _, f := range serverSideFlags {
				if set[f] {
					return fmt.Errorf("register: --%s cannot be used with a runner authentication token (glrt-): set it on the runner in GitLab", f)
				}
			}
		}
		creds, err = client.Verify(ctx, token, systemID, info)
	default:
		token := o.regToken
		if token == "" {
			token = o.token
		}
		req := gitlab.RegisterRequest{Description: o.name, MaintenanceNote: o.maintenanceNote, TagList: o.tagList,
			RunUntagged: o.runUntagged || strings.TrimSpace(o.tagList) == "", Locked: o.locked, AccessLevel: o.accessLevel,
			MaximumTimeout: o.maximumTimeout, Paused: o.paused, Info: info, Token: token}
		creds, err = client.Register(ctx, req)
	}
	if err != nil {
		return fmt.Errorf("register: %w", err)
	}
	r.ID, r.Token, r.TokenObtainedAt = creds.ID, creds.Token, time.Now().UTC().Truncate(time.Second)
	if creds.TokenExpiresAt != nil {
		r.TokenExpiresAt = creds.TokenExpiresAt.UTC()
	}
	err = config.Update(o.config, func(runners []config.Runner) ([]config.Runner, error) {
		runners = slices.DeleteFunc(runners, func(x config.Runner) bool { return x.URL == r.URL && x.Token == r.Token })
		return append(runners, r), nil
	})
	if err != nil {
		return fmt.Errorf("register: the runner is registered in GitLab (id %d) but config.toml was not written: %w", r.ID, err)
	}
	fmt.Fprintf(stdout, "Runner registered successfully. Config saved to %q (runner %q, id %d, executor %s).\n", o.config, r.Name, r.ID, executor)
	return nil
}

func fieldOf(info sdk.Info, name string) sdk.ConfigField {
	for _, f := range info.Config {
		if f.Name == name {
			return f
		}
	}
	return sdk.ConfigField{Name: name, Type: sdk.FieldString}
}

// scanBool says whether a bool flag is set before flags are parsed.
func scanBool(args []string, names ...string) bool {
	for _, a := range args {
		if a == "--" {
			break
		}
		t := strings.TrimLeft(a, "-")
		if t == a {
			continue
		}
		for _, n := range names {
			if t == n || t == n+"=true" || t == n+"=1" {
				return true
			}
		}
	}
	return false
}

// selectRunners picks the runners named (all of them when name is "").
func selectRunners(c *config.Config, name string) ([]config.Runner, error) {
	if name == "" {
		return c.Runners, nil
	}
	for _, r := range c.Runners {
		if r.Name == name {
			return []config.Runner{r}, nil
		}
	}
	return nil, fmt.Errorf("no runner named %q in the config", name)
}

func verifyCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("berth verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := configFlag(fs)
	name := fs.String("name", "", "verify only this runner")
	del := fs.Bool("delete", false, "remove runners GitLab no longer knows from the config")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, warnings, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	for _, w := range warnings {
		fmt.Fprintln(stderr, "WARNING:", w)
	}
	runners, err := selectRunners(cfg, *name)
	if err != nil {
		return err
	}
	systemID, err := systemIDFor(*cfgPath)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	removed := map[string]bool{}
	var failed []string
	for _, r := range runners {
		client, err := gitlab.NewClient(r.URL, gitlab.Options{UserAgent: userAgent(), Log: log})
		if err != nil {
			return err
		}
		_, err = client.Verify(ctx, r.Token, systemID, gitlab.Info{Name: "berth", Version: version, Executor: r.Executor})
		switch {
		case err == nil:
			fmt.Fprintf(stdout, "Verifying runner... is valid  runner=%s name=%s\n", r.ShortToken(), r.Name)
		case errors.Is(err, gitlab.ErrForbidden):
			fmt.Fprintf(stdout, "Verifying runner... is removed  runner=%s name=%s\n", r.ShortToken(), r.Name)
			removed[runnerKey(r.URL, r.Token)] = true
			failed = append(failed, r.Name)
		default:
			fmt.Fprintf(stdout, "Verifying runner... failed  runner=%s name=%s: %v\n", r.ShortToken(), r.Name, err)
			failed = append(failed, r.Name)
		}
	}
	if *del && len(removed) > 0 {
		err := config.Update(*cfgPath, func(rs []config.Runner) ([]config.Runner, error) {
			return slices.DeleteFunc(rs, func(r config.Runner) bool { return removed[runnerKey(r.URL, r.Token)] }), nil
		})
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "Removed %d runner(s) GitLab no longer knows from %s\n", len(removed), *cfgPath)
		return nil
	}
	if len(failed) > 0 {
		return fmt.Errorf("verify: not valid: %s", strings.Join(failed, ", "))
	}
	return nil
}

func unregisterCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("berth unregister", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := configFlag(fs)
	name := fs.String("name", "", "the runner to unregister")
	url := fs.String("url", "", "with --token: the runner to unregister")
	token := fs.String("token", "", "with --url: the runner to unregister")
	all := fs.Bool("all-runners", false, "unregister every runner of the config")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, _, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	var chosen []config.Runner
	switch {
	case *all:
		chosen = cfg.Runners
	case *name != "":
		if chosen, err = selectRunners(cfg, *name); err != nil {
			return err
		}
	case *url != "" && *token != "":
		clean, err := gitlab.CleanURL(*url)
		if err != nil {
			return err
		}
		for _, r := range cfg.Runners {
			if r.Token == *token && (r.URL == clean || r.URL == *url) {
				chosen = append(chosen, r)
			}
		}
		if len(chosen) == 0 {
			chosen = []config.Runner{{Name: "(not in config)", URL: clean, Token: *token}}
		}
	default:
		return errors.New("unregister: say which runner: --name, --url and --token, or --all-runners")
	}
	systemID, err := systemIDFor(*cfgPath)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	gone := map[string]bool{}
	var errs []error
	for _, r := range chosen {
		client, err := gitlab.NewClient(r.URL, gitlab.Options{UserAgent: userAgent(), Log: log})
		if err != nil {
			return err
		}
		if gitlab.IsCreatedRunnerToken(r.Token) {
			// A runner created in GitLab stays there: only this
			// machine's manager goes.
			err = client.UnregisterManager(ctx, r.Token, systemID)
		} else {
			err = client.Unregister(ctx, r.Token)
		}
		var se *gitlab.StatusError
		if err != nil && !(errors.As(err, &se) && se.Status == 404) && !errors.Is(err, gitlab.ErrForbidden) {
			errs = append(errs, fmt.Errorf("runner %q: %w", r.Name, err))
			continue
		}
		if err != nil {
			fmt.Fprintf(stdout, "Runner %q was already gone from GitLab (%v); removing it from the config\n", r.Name, err)
		} else {
			fmt.Fprintf(stdout, "Unregistering runner from GitLab succeeded  runner=%s name=%s\n", r.ShortToken(), r.Name)
		}
		gone[runnerKey(r.URL, r.Token)] = true
	}
	if len(gone) > 0 {
		if err := config.Update(*cfgPath, func(rs []config.Runner) ([]config.Runner, error) {
			return slices.DeleteFunc(rs, func(r config.Runner) bool { return gone[runnerKey(r.URL, r.Token)] }), nil
		}); err != nil {
			return err
		}
	}
	return errors.Join(errs...)
}

func listCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("berth list", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := configFlag(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, warnings, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	for _, w := range warnings {
		fmt.Fprintln(stderr, "WARNING:", w)
	}
	fmt.Fprintf(stdout, "Listing configured runners  ConfigFile=%s\n", *cfgPath)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	for _, r := range cfg.Runners {
		fmt.Fprintf(tw, "%s\tExecutor=%s\tToken=%s\tURL=%s\n", r.Name, r.Executor, r.ShortToken(), r.URL)
	}
	return tw.Flush()
}

// systemIDFor reads (or makes, once) the machine's system_id, kept beside
// config.toml.
func systemIDFor(cfgPath string) (string, error) {
	return gitlab.LoadSystemID(filepath.Join(filepath.Dir(cfgPath), gitlab.SystemIDFile))
}

// serviceSystemID is systemIDFor for berth run: when config.toml's folder
// cannot be written (a read-only mount, as of a Kubernetes Secret), the ID
// is kept in the working directory instead, so it lives as long as that.
func serviceSystemID(cfgPath, work string, log *slog.Logger) (string, error) {
	id, err := systemIDFor(cfgPath)
	if err == nil || !(errors.Is(err, syscall.EROFS) || errors.Is(err, fs.ErrPermission)) {
		return id, err
	}
	alt := filepath.Join(work, ".berth", gitlab.SystemIDFile)
	log.Info("the folder of the config file is read-only; keeping the runner system ID in the working directory", "config", cfgPath, "system_id_file", alt)
	return gitlab.LoadSystemID(alt)
}
