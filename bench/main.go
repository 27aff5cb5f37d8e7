// Command bench measures berth's executor plugin path against baselines
// taken in the same run, and prints the results as a markdown table (the
// figures of docs/BENCHMARKS.md):
//
//	go run ./bench            # from the module root; builds berth first
//	go run ./bench -profile /tmp/berth-prof   # also writes CPU profiles
//
// The plugin is started the real way: berth is built, and plugins.Start
// runs `berth __serve-executor shell` with the go-plugin handshake and
// berth's mutual TLS. Each figure is interleaved with its baseline (ABBA…) so that
// the noise of a shared machine hits both; compare the ratios, not the
// absolute figures, between runs.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	"github.com/berthci/berth/host/job"
	"github.com/berthci/berth/host/trace"
	"github.com/berthci/berth/internal/benchstat"
	"github.com/berthci/berth/plugins"
	"github.com/berthci/berth/sdk"
)

// config is what the flags set.
type config struct {
	berth   string
	rpcN    int
	tputN   int
	tputMiB int
	jobN    int
	startN  int
	profile string
	only    string
}

func main() {
	if len(os.Args) == 2 && os.Args[1] == echoArg {
		if err := serveEcho(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	var cfg config
	fs := flag.NewFlagSet("bench", flag.ExitOnError)
	fs.StringVar(&cfg.berth, "berth", "", "use this berth binary instead of building ./cmd/berth")
	fs.IntVar(&cfg.rpcN, "rpc", 3000, "round trips of (a), each of the plugin call and the baseline")
	fs.IntVar(&cfg.tputN, "tput", 11, "runs of (b), each of the three")
	fs.IntVar(&cfg.tputMiB, "mib", 100, "MiB written by the step of (b)")
	fs.IntVar(&cfg.jobN, "jobs", 60, "jobs of (c), and as many runs of the baseline")
	fs.IntVar(&cfg.startN, "starts", 30, "plugin starts of (d), and as many runs of each baseline")
	fs.StringVar(&cfg.only, "only", "abcd", "which benchmarks to run")
	fs.StringVar(&cfg.profile, "profile", "", "after measuring, write CPU profiles of host and plugin for each benchmark to this folder")
	_ = fs.Parse(os.Args[1:])
	if err := run(context.Background(), cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

// env is what every benchmark shares: the berth binary, a running plugin
// behind a Supervisor (as `berth exec` has it) and a scratch folder.
type env struct {
	cfg   config
	tmp   string
	berth string
	log   *slog.Logger
	sup   *plugins.Supervisor
	info  sdk.Info
	// settings are the plugin's settings.
	settings map[string]any
}

func run(ctx context.Context, cfg config, out io.Writer) error {
	tmp, err := os.MkdirTemp("", "berth-bench-")
	if err != nil {
		return fmt.Errorf("making a scratch folder: %w", err)
	}
	defer os.RemoveAll(tmp)
	e := &env{cfg: cfg, tmp: tmp, berth: cfg.berth, log: slog.New(slog.DiscardHandler)}
	if e.berth == "" {
		e.berth = filepath.Join(tmp, "berth")
		if err := goBuild(e.berth, "./cmd/berth"); err != nil {
			return err
		}
	}
	facts := machineFacts()
	e.settings = map[string]any{"builds_dir": filepath.Join(tmp, "builds")}
	e.sup = plugins.NewSupervisor(e.plugin(), e.settings, plugins.StartOptions{Log: e.log})
	defer e.sup.Close()
	if e.info, err = e.sup.Info(ctx); err != nil {
		return fmt.Errorf("starting the shell plugin: %w", err)
	}

	var rows []row
	var notes []string
	benches := []struct {
		name string
		run  func(context.Context) ([]row, []string, error)
	}{{"a", e.benchRPC}, {"b", e.benchThroughput}, {"c", e.benchJob}, {"d", e.benchStart}}
	for _, b := range benches {
		if !strings.Contains(cfg.only, b.name) {
			continue
		}
		r, n, err := b.run(ctx)
		if err != nil {
			return err
		}
		rows, notes = append(rows, r...), append(notes, n...)
	}
	facts.loadAfter = benchstat.LoadAverage()
	printReport(out, cfg, facts, rows, notes)

	if cfg.profile != "" {
		if err := e.profileAll(ctx); err != nil {
			return err
		}
	}
	return nil
}

// plugin is the built-in shell executor of the berth binary under test.
func (e *env) plugin() plugins.Plugin {
	return plugins.Plugin{Name: "shell", Path: e.berth, Args: []string{"__serve-executor", "shell"}, Builtin: true}
}

// goBuild builds pkg (relative to the module root) into out.
func goBuild(out, pkg string) error {
	root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		return fmt.Errorf("finding the module root: %w", err)
	}
	progress("building %s", pkg)
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = strings.TrimSpace(string(root))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("building %s: %w", pkg, err)
	}
	return nil
}

// row is one line of the results table.
type row struct {
	metric, berth, baseline, ratio, target string
	met                                    bool
}

// ---- (a) unary RPC round trip ----

func (e *env) benchRPC(ctx context.Context) ([]row, []string, error) {
	progress("(a) unary RPC round trip, %d × 2", e.cfg.rpcN)
	inst, err := e.sup.Instance(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("(a): %w", err)
	}
	ex := inst.Executor()
	peer, err := startEcho()
	if err != nil {
		return nil, nil, fmt.Errorf("(a): %w", err)
	}
	info := func() (time.Duration, error) {
		t := time.Now()
		_, err := ex.Info(ctx)
		return time.Since(t), err
	}
	var cpu [4]cpuAcc // Info, its echo, Configure, its echo
	echoPid := peer.cmd.Process.Pid
	rpc, base, err := interleave(e.cfg.rpcN, e.cfg.rpcN/10,
		withCPU(&cpu[0], inst.Pid(), info), withCPU(&cpu[1], echoPid, peer.roundTrip))
	// Configure with the settings the plugin already has: no syscalls in
	// the plugin, unlike Info (which looks bash and sh up in $PATH).
	configure := func() (time.Duration, error) {
		t := time.Now()
		err := ex.Configure(ctx, e.settings)
		return time.Since(t), err
	}
	var conf, base2 samples
	if err == nil {
		conf, base2, err = interleave(e.cfg.rpcN, e.cfg.rpcN/10,
			withCPU(&cpu[2], inst.Pid(), configure), withCPU(&cpu[3], echoPid, peer.roundTrip))
	}
	if cerr := peer.close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, nil, fmt.Errorf("(a): %w", err)
	}
	r := row{
		metric:   "(a) unary plugin RPC round trip (`Info`), median (p95)",
		berth:    fmt.Sprintf("%s (%s)", fmtDur(rpc.median()), fmtDur(rpc.p95())),
		baseline: fmt.Sprintf("%s (%s)", fmtDur(base.median()), fmtDur(base.p95())),
		ratio:    fmt.Sprintf("%.1f×", float64(rpc.median())/float64(base.median())),
		target:   "≤ 150 µs",
		met:      rpc.median() <= 150*time.Microsecond,
	}
	r2 := row{
		metric:   "(a′) cheapest unary call (`Configure` with the settings it has), median (p95)",
		berth:    fmt.Sprintf("%s (%s)", fmtDur(conf.median()), fmtDur(conf.p95())),
		baseline: fmt.Sprintf("%s (%s)", fmtDur(base2.median()), fmtDur(base2.p95())),
		ratio:    fmt.Sprintf("%.1f×", float64(conf.median())/float64(base2.median())),
		target:   "≤ 150 µs",
		met:      conf.median() <= 150*time.Microsecond,
	}
	note := fmt.Sprintf("(a) %d interleaved round trips of each pair; baseline: a %d-byte message echoed by a child process over a unix socketpair, both ends on Go's net package.",
		e.cfg.rpcN, echoMsgSize)
	us := func(d time.Duration) string { return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond)) }
	cpuNote := fmt.Sprintf("(a) CPU time per round trip (user + system, mean): Info host %s + plugin %s; Configure host %s + plugin %s; "+
		"echo host %s + child %s. These include the Go scheduler spinning idle threads while a process waits for the reply, so they show "+
		"how busy each call keeps the machine rather than the cost of the work itself.",
		us(cpu[0].mean().host), us(cpu[0].mean().plugin), us(cpu[2].mean().host), us(cpu[2].mean().plugin),
		us((cpu[1].sum.host+cpu[3].sum.host)/time.Duration(max(cpu[1].n+cpu[3].n, 1))),
		us((cpu[1].sum.plugin+cpu[3].sum.plugin)/time.Duration(max(cpu[1].n+cpu[3].n, 1))))
	return []row{r, r2}, []string{note, cpuNote}, nil
}

// ---- (b) output throughput ----

// countWriter counts what it is given and keeps nothing.
type countWriter struct{ n atomic.Int64 }

func (c *countWriter) Write(p []byte) (int, error) {
	c.n.Add(int64(len(p)))
	return len(p), nil
}

// The masked variables of (b): two, of the lengths tokens have.
const (
	benchSecret1 = "glpat-Xq3vR8tNw2LmZp7KcY4d"
	benchSecret2 = "s3cr3t-P4ssw0rd!"
)

func (e *env) benchThroughput(ctx context.Context) ([]row, []string, error) {
	size := int64(e.cfg.tputMiB) << 20
	progress("(b) output throughput, %d MiB, %d × 3", e.cfg.tputMiB, e.cfg.tputN)
	h, err := e.sup.Prepare(ctx, sdk.Job{ID: "bench-throughput", Name: "throughput", Shell: "bash"})
	if err != nil {
		return nil, nil, fmt.Errorf("(b): preparing: %w", err)
	}
	defer e.sup.Cleanup(context.WithoutCancel(ctx), h)
	step := sdk.Step{Name: "step_script", Script: fmt.Sprintf("head -c %d /dev/zero\n", size), Shell: "bash", GracePeriod: time.Second}

	plugin := func(useTrace bool) func() (time.Duration, error) {
		return func() (time.Duration, error) {
			sink := &countWriter{}
			var w io.Writer = sink
			var tr *trace.Trace
			if useTrace {
				tr = trace.New(sink, trace.Options{Secrets: []string{benchSecret1, benchSecret2}, Limit: -1})
				w = tr
			}
			t := time.Now()
			code, err := e.sup.Run(ctx, h, step, sdk.Output{Stdout: w, Stderr: w})
			if err == nil && tr != nil {
				err = tr.Close()
			}
			d := time.Since(t)
			if err != nil || code != 0 {
				return 0, fmt.Errorf("(b): the step ended with code %d: %v", code, err)
			}
			if sink.n.Load() != size {
				return 0, fmt.Errorf("(b): the sink got %d bytes, not %d", sink.n.Load(), size)
			}
			return d, nil
		}
	}
	pipe := func() (time.Duration, error) {
		sink := &countWriter{}
		t := time.Now()
		if err := pipeCopy(sink, size); err != nil {
			return 0, fmt.Errorf("(b) baseline: %w", err)
		}
		d := time.Since(t)
		if sink.n.Load() != size {
			return 0, fmt.Errorf("(b) baseline: got %d bytes, not %d", sink.n.Load(), size)
		}
		return d, nil
	}
	inst, err := e.sup.Instance(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("(b): %w", err)
	}
	var cpu [3]cpuAcc
	s, err := interleave3(e.cfg.tputN, 1, [3]func() (time.Duration, error){
		withCPU(&cpu[0], inst.Pid(), plugin(true)),
		withCPU(&cpu[1], inst.Pid(), plugin(false)),
		withCPU(&cpu[2], 0, pipe),
	})
	if err != nil {
		return nil, nil, err
	}
	traced, raw, base := mibps(size, s[0].median()), mibps(size, s[1].median()), mibps(size, s[2].median())
	pipeStr := fmt.Sprintf("%.0f MiB/s (os.Pipe)", base)
	rows := []row{{
		metric:   fmt.Sprintf("(b) output throughput, step → plugin → `trace.Trace` (2 masked secrets), %d MiB", e.cfg.tputMiB),
		berth:    fmt.Sprintf("%.0f MiB/s", traced),
		baseline: pipeStr,
		ratio:    fmt.Sprintf("%.0f %%", 100*traced/base),
		target:   "≥ 40 % of os.Pipe",
		met:      traced >= 0.4*base,
	}, {
		metric:   "(b′) same, raw plugin stream → io.Discard (no trace)",
		berth:    fmt.Sprintf("%.0f MiB/s", raw),
		baseline: pipeStr,
		ratio:    fmt.Sprintf("%.0f %%", 100*raw/base),
		target:   "—",
		met:      true,
	}}
	note := fmt.Sprintf("(b) median of %d interleaved runs of each; MiB/s from the median wall time of the whole step (shell start to exit event). "+
		"Step script `head -c %d /dev/zero` run by bash through the plugin; baseline: `head -c %d /dev/zero` with stdout an os.Pipe, "+
		"copied in-process in 64 KiB reads (the size the shell executor reads) to the same counting sink. The trace has no output limit here "+
		"(Limit -1) so that the sink's byte count can be checked; masking runs on every byte either way. p95 of the wall time: trace %s, raw %s, pipe %s.",
		e.cfg.tputN, size, size, fmtDur(s[0].p95()), fmtDur(s[1].p95()), fmtDur(s[2].p95()))
	cpuNote := fmt.Sprintf("(b) CPU time per MiB moved (user + system, mean over all runs; less sensitive to the machine's load than wall time): "+
		"with trace %s (host %s, plugin %s, bash+head %s); raw %s (host %s, plugin %s, bash+head %s); os.Pipe %s (host %s, head %s). "+
		"CPU ratio os.Pipe / with trace: %.0f %%.",
		perMiB(cpu[0].mean().total(), size), perMiB(cpu[0].mean().host, size), perMiB(cpu[0].mean().plugin, size), perMiB(cpu[0].mean().work, size),
		perMiB(cpu[1].mean().total(), size), perMiB(cpu[1].mean().host, size), perMiB(cpu[1].mean().plugin, size), perMiB(cpu[1].mean().work, size),
		perMiB(cpu[2].mean().total(), size), perMiB(cpu[2].mean().host, size), perMiB(cpu[2].mean().work, size),
		100*float64(cpu[2].mean().total())/float64(cpu[0].mean().total()))
	return rows, []string{note, cpuNote}, nil
}

// perMiB prints CPU time per MiB of size bytes.
func perMiB(d time.Duration, size int64) string {
	return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)/(float64(size)/(1<<20)))
}

// onlyReader hides an *os.File's WriteTo, so that io.CopyBuffer uses the
// buffer it is given.
type onlyReader struct{ io.Reader }

// pipeCopy is (b)'s baseline: head writes size bytes of /dev/zero into an
// os.Pipe, copied in this process to w.
func pipeCopy(w io.Writer, size int64) error {
	r, pw, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("os.Pipe: %w", err)
	}
	cmd := exec.Command("head", "-c", fmt.Sprint(size), "/dev/zero")
	cmd.Stdout = pw
	err = cmd.Start()
	pw.Close()
	if err != nil {
		r.Close()
		return fmt.Errorf("starting head: %w", err)
	}
	_, cerr := io.CopyBuffer(w, onlyReader{r}, make([]byte, 64<<10))
	r.Close()
	return errors.Join(cerr, cmd.Wait())
}

// ---- (c) per-job overhead ----

func (e *env) benchJob(ctx context.Context) ([]row, []string, error) {
	progress("(c) per-job overhead, %d × 2", e.cfg.jobN)
	timed := &timedExecutor{Executor: e.sup}
	runner := &job.Runner{Executor: timed, Info: e.info, Version: "bench", Log: e.log}
	i := 0
	trivial := func() (time.Duration, error) {
		i++
		j := job.Job{ID: fmt.Sprintf("bench-job-%d", i), Name: "trivial", Stage: "test", Script: []string{"true"}}
		t := time.Now()
		res := runner.Run(ctx, j, io.Discard)
		d := time.Since(t)
		if res.Status != job.Success {
			return 0, fmt.Errorf("(c): the trivial job ended %s: %v", res.Status, res.Err)
		}
		return d, nil
	}
	bash := func() (time.Duration, error) {
		t := time.Now()
		if err := exec.Command("bash", "-c", "true").Run(); err != nil {
			return 0, fmt.Errorf("(c) baseline: %w", err)
		}
		return time.Since(t), nil
	}
	jobs, base, err := interleave(e.cfg.jobN, 3, trivial, bash)
	if err != nil {
		return nil, nil, err
	}
	diff := jobs.median() - base.median()
	r := row{
		metric:   "(c) per-job overhead, trivial job (`true`) through `job.Runner.Run`, plugin running, median (p95)",
		berth:    fmt.Sprintf("%s (%s)", fmtDur(jobs.median()), fmtDur(jobs.p95())),
		baseline: fmt.Sprintf("%s (%s) (`bash -c true`)", fmtDur(base.median()), fmtDur(base.p95())),
		ratio:    fmt.Sprintf("+%s, %.1f×", fmtDur(diff), float64(jobs.median())/float64(base.median())),
		target:   "≤ 10 ms above bash",
		met:      diff <= 10*time.Millisecond,
	}
	note := fmt.Sprintf("(c) %d interleaved runs of each. A job is Prepare → Run(step_script, the generated bash script with its variables) → Cleanup, "+
		"through the Supervisor as `berth exec` has it, trace to io.Discard; the baseline execs `bash -c true` and waits. "+
		"Median of each call within a job: Prepare %s, Run (step_script) %s, Cleanup %s.",
		e.cfg.jobN, fmtDur(timed.prepare.median()), fmtDur(timed.run.median()), fmtDur(timed.cleanup.median()))
	return []row{r}, []string{note}, nil
}

// timedExecutor records how long each call of a job takes.
type timedExecutor struct {
	job.Executor
	prepare, run, cleanup samples
}

func (t *timedExecutor) Prepare(ctx context.Context, j sdk.Job) (sdk.Handle, error) {
	start := time.Now()
	h, err := t.Executor.Prepare(ctx, j)
	t.prepare = append(t.prepare, time.Since(start))
	return h, err
}

func (t *timedExecutor) RunSteps(ctx context.Context, h sdk.Handle, steps []sdk.Step, out sdk.StepOutput) ([]sdk.StepResult, error) {
	start := time.Now()
	res, err := t.Executor.RunSteps(ctx, h, steps, out)
	t.run = append(t.run, time.Since(start))
	return res, err
}

func (t *timedExecutor) Cleanup(ctx context.Context, h sdk.Handle) error {
	start := time.Now()
	err := t.Executor.Cleanup(ctx, h)
	t.cleanup = append(t.cleanup, time.Since(start))
	return err
}

// ---- (d) plugin start ----

func (e *env) benchStart(ctx context.Context) ([]row, []string, error) {
	progress("(d) plugin start, %d × 3", e.cfg.startN)
	start := func() (time.Duration, error) {
		t := time.Now()
		inst, err := plugins.Start(ctx, e.plugin(), plugins.StartOptions{Log: e.log})
		d := time.Since(t)
		if err != nil {
			return 0, fmt.Errorf("(d): %w", err)
		}
		inst.Kill()
		return d, nil
	}
	execWait := func(name string, args ...string) func() (time.Duration, error) {
		return func() (time.Duration, error) {
			t := time.Now()
			if err := exec.Command(name, args...).Run(); err != nil {
				return 0, fmt.Errorf("(d) baseline %s: %w", name, err)
			}
			return time.Since(t), nil
		}
	}
	s, err := interleave3(e.cfg.startN, 2, [3]func() (time.Duration, error){start, execWait("/bin/true"), execWait(e.berth, "version")})
	if err != nil {
		return nil, nil, err
	}
	starts, tru, ver := s[0], s[1], s[2]
	r := row{
		metric:   "(d) plugin start: exec → handshake (mutual TLS, P-256) → first answered `Info`, median (p95)",
		berth:    fmt.Sprintf("%s (%s)", fmtDur(starts.median()), fmtDur(starts.p95())),
		baseline: fmt.Sprintf("%s (`/bin/true`); %s (`berth version`)", fmtDur(tru.median()), fmtDur(ver.median())),
		ratio:    fmt.Sprintf("%.0f× true; %.1f× berth version", float64(starts.median())/float64(tru.median()), float64(starts.median())/float64(ver.median())),
		target:   "≤ 30 ms",
		met:      starts.median() <= 30*time.Millisecond,
	}
	note := fmt.Sprintf("(d) %d interleaved runs of each; the plugin's Kill is outside the measured time. Baselines exec and wait: `/bin/true`, "+
		"and `berth version` (the Go runtime's start in the same binary). p95: true %s, berth version %s.",
		e.cfg.startN, fmtDur(tru.p95()), fmtDur(ver.p95()))
	return []row{r}, []string{note}, nil
}

// ---- report ----

type facts struct {
	nproc      int
	cpu        string
	goVersion  string
	loadBefore string
	loadAfter  string
	date       string
}

func machineFacts() facts {
	f := facts{nproc: runtime.NumCPU(), cpu: "unknown", goVersion: runtime.Version(), loadBefore: benchstat.LoadAverage(), date: time.Now().UTC().Format("2006-01-02 15:04 MST")}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				f.cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	return f
}

func printReport(w io.Writer, cfg config, f facts, rows []row, notes []string) {
	fmt.Fprintf(w, "Run of %s: %d CPUs (%s), %s, load average %s at the start, %s at the end.\n\n",
		f.date, f.nproc, f.cpu, f.goVersion, f.loadBefore, f.loadAfter)
	fmt.Fprintln(w, "| metric | berth | baseline (same run) | ratio | target | met? |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for _, r := range rows {
		met := "yes"
		if !r.met {
			met = "**no**"
		}
		if r.target == "—" {
			met = "—"
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", r.metric, r.berth, r.baseline, r.ratio, r.target, met)
	}
	fmt.Fprintln(w)
	for _, n := range notes {
		fmt.Fprintf(w, "- %s\n", n)
	}
}
