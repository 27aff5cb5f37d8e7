package kubernetes

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/watch"
	k8s "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/flowcontrol"

	"github.com/berthci/berth/internal/benchstat"
	"github.com/berthci/berth/sdk"
)

// TestBenchmark measures a trivial job through the executor (Configure
// once, then per job Prepare → Run of one step `true` → Cleanup, called
// in-process) against what client-go alone pays for the same life of a
// bare pod: create a pod of the same image running `true` (restartPolicy
// Never), watch it until it has Succeeded with the container's exit code,
// delete it (grace 0) and watch until it is gone. Cleanup waits until the
// job's pod is gone from the API, so the baseline does too. The two are
// alternated in the same run (A B B A …), one at a time, then 20 jobs at
// concurrency 4, two rounds each side. It runs only with BERTH_K8S_BENCH
// set (to the number of serial jobs per side, default 10), asserts no
// timing, and prints rows for docs/BENCHMARKS.md, followed by where the
// time of a serial job goes as seen by a watch on the pods.
//
// More figures explain the others: a step's Run against a bare exec of
// `true` in the same pod, and the concurrent jobs again with the
// executor's client-side rate limit counted (client-go's default, 5
// requests/s, burst 10, which the executor uses) and raised to 100/s.
//
// The quantile helper is the test's own: bench/stats.go is in package
// main and cannot be imported.
func TestBenchmark(t *testing.T) {
	rounds := benchRounds(t, "serial jobs")
	path, _ := testCluster(t)
	tag := benchTag()
	runner := "berth-bench-" + tag
	const ns = "default"

	// The baseline's client is made as the executor makes its own: the
	// kubeconfig's, the executor's rate limit (clientQPS, clientBurst: the
	// same token bucket, counted), no timeout (watches last as long as a
	// pod).
	rc, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	rc.UserAgent = "berth-k8s-bench"
	bareLimit := &countingLimiter{RateLimiter: flowcontrol.NewTokenBucketRateLimiter(clientQPS, clientBurst)}
	rc.RateLimiter = bareLimit
	cs, err := k8s.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	// The observer has a client of its own, so that its calls take
	// nothing from the others' rate limits.
	orc := rest.CopyConfig(rc)
	orc.RateLimiter, orc.QPS, orc.Burst = nil, 50, 100
	ocs, err := k8s.NewForConfig(orc)
	if err != nil {
		t.Fatal(err)
	}
	// Both sides' pods carry the runner label: one selector finds them all.
	sel := labels.Set{LabelRunner: runner}.String()
	t.Cleanup(func() {
		zero := int64(0)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = ocs.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero}, metav1.ListOptions{LabelSelector: sel})
	})

	settings := testSettings(path, map[string]any{"runner_name": runner})
	e := New()
	if err := e.Configure(t.Context(), settings); err != nil {
		t.Fatal(err)
	}
	// counted and fast are the executor with its client's rate limiter
	// swapped (test-only; nothing else differs): counted has client-go's
	// default (5/s, burst 10, what the executor had before it set its
	// own) and adds up the waits, fast allows 100/s (burst 200).
	withLimiter := func(qps float32, burst int) (*Executor, *countingLimiter) {
		x := New()
		if err := x.Configure(t.Context(), settings); err != nil {
			t.Fatal(err)
		}
		l := &countingLimiter{RateLimiter: flowcontrol.NewTokenBucketRateLimiter(qps, burst)}
		x.mu.Lock()
		defer x.mu.Unlock()
		xrc := rest.CopyConfig(x.client.rest)
		xrc.RateLimiter = l
		xcs, err := k8s.NewForConfig(xrc)
		if err != nil {
			t.Fatal(err)
		}
		x.client = &cluster{rest: xrc, cs: xcs, describe: x.client.describe}
		return x, l
	}
	counted, countedLimit := withLimiter(rest.DefaultQPS, rest.DefaultBurst)
	fast, fastLimit := withLimiter(100, 200)

	obs := newPodObserver()
	obsCtx, stopObs := context.WithCancel(context.Background())
	obsDone := make(chan struct{})
	if err := obs.start(obsCtx, ocs, ns, sel, obsDone); err != nil {
		t.Fatal(err)
	}
	defer func() { stopObs(); <-obsDone }()

	var mu sync.Mutex
	n := 0
	next := func() string {
		mu.Lock()
		defer mu.Unlock()
		n++
		return fmt.Sprintf("bench-%s-%d", tag, n)
	}
	// Where the jobs record their phases (Prepare, Run, Cleanup) and, one
	// at a time, their marks for the observer's report; nil: not kept.
	var phases *[3]benchSamples
	var record *[]benchJob
	var barePods []benchJob
	var serialPhases, concPhases, countedPhases, fastPhases [3]benchSamples
	var jobPods []benchJob

	jobOn := func(e *Executor) func() error {
		return func() error {
			id := next()
			m, err := benchstat.TrivialJob(context.Background(), e, sdk.Job{ID: id, Image: sdk.Image{Name: busyboxImage}, Timeout: 10 * time.Minute})
			if err != nil {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			if phases != nil {
				for i := range phases {
					phases[i] = append(phases[i], m[i+1].Sub(m[i]))
				}
			}
			if record != nil {
				*record = append(*record, benchJob{pod: podName(id), start: m[0], marks: m[1:]})
			}
			return nil
		}
	}
	job, countedJob, fastJob := jobOn(e), jobOn(counted), jobOn(fast)
	plain := func() error {
		name := "berth-bare-" + strings.TrimPrefix(next(), "bench-")
		start := time.Now()
		deleted, err := bareTrue(context.Background(), cs, ns, name, map[string]string{LabelRunner: runner})
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		if record != nil {
			barePods = append(barePods, benchJob{pod: name, start: start, marks: []time.Time{deleted, time.Now()}})
		}
		return nil
	}
	timed := func(f func() error) time.Duration {
		start := time.Now()
		if err := f(); err != nil {
			t.Fatal(err)
		}
		return time.Since(start)
	}

	load0 := benchstat.LoadAverage()
	start0 := time.Now()
	// One of each to warm up, not kept.
	timed(job)
	timed(plain)
	timed(countedJob)
	timed(fastJob)
	phases, record = &serialPhases, &jobPods
	sa, sb := benchstat.Alternate(rounds, func() time.Duration { return timed(job) }, func() time.Duration { return timed(plain) })
	a, b := benchSamples(sa), benchSamples(sb)
	record = nil

	// A step's Run against a bare exec of `true` (no wrapper, no stdin)
	// in one job's pod, alternated.
	h, err := e.Prepare(context.Background(), sdk.Job{ID: next(), Image: sdk.Image{Name: busyboxImage}, Timeout: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	st, _ := decodeState(h)
	step := func() error {
		code, err := e.Run(context.Background(), h, sdk.Step{Name: "script", Script: "true\n", Shell: "sh"}, sdk.Output{Stdout: io.Discard, Stderr: io.Discard})
		if err == nil && code != 0 {
			err = fmt.Errorf("exit code %d", code)
		}
		return err
	}
	_, c, err := e.current()
	if err != nil {
		t.Fatal(err)
	}
	bareExec := func() error {
		code, err := c.exec(context.Background(), st.Namespace, st.Pod, buildContainer, []string{"true"}, execIO{stdout: io.Discard, stderr: io.Discard})
		if err == nil && code != 0 {
			err = fmt.Errorf("exit code %d", code)
		}
		return err
	}
	sra, srb := benchstat.Alternate(2*rounds, func() time.Duration { return timed(step) }, func() time.Duration { return timed(bareExec) })
	ra, rb := benchSamples(sra), benchSamples(srb)
	if err := e.Cleanup(context.Background(), h); err != nil {
		t.Fatal(err)
	}

	concurrent := func(f func() error) time.Duration {
		d, err := benchstat.Concurrently(20, 4, f)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	// A B C F F C B A: the executor, the baseline, the executor with
	// its rate limiter counted, and raised.
	phases = &concPhases
	ca1 := concurrent(job)
	phases = nil
	bareLimit.reset()
	cb1 := concurrent(plain)
	bareWait1, bareCalls := bareLimit.total()
	countedLimit.reset()
	fastLimit.reset()
	phases = &countedPhases
	cc1 := concurrent(countedJob)
	phases = &fastPhases
	cf1 := concurrent(fastJob)
	cf2 := concurrent(fastJob)
	phases = &countedPhases
	cc2 := concurrent(countedJob)
	countedWait, countedCalls := countedLimit.total()
	fastWait, fastCalls := fastLimit.total()
	phases = nil
	bareLimit.reset()
	cb2 := concurrent(plain)
	bareWait2, _ := bareLimit.total()
	phases = &concPhases
	ca2 := concurrent(job)
	phases = nil
	load1 := benchstat.LoadAverage()

	ma, mb := a.quantile(0.5), b.quantile(0.5)
	med := func(s benchSamples) string { return benchstat.Ms(s.quantile(0.5)) }
	fmt.Printf("\n%s, %s, load average %s → %s\n\n", start0.UTC().Format("2006-01-02 15:04 UTC"), time.Since(start0).Round(time.Second), load0, load1)
	fmt.Printf("| metric | berth kubernetes executor | bare pod with client-go (same run) | ratio |\n|---|---|---|---|\n")
	fmt.Printf("| trivial job, one at a time (n=%d each), median (p90) | %s (%s) | %s (%s) | %.2f× |\n",
		rounds, benchstat.Ms(ma), benchstat.Ms(a.quantile(0.9)), benchstat.Ms(mb), benchstat.Ms(b.quantile(0.9)), float64(ma)/float64(mb))
	fmt.Printf("| — of which Prepare, Run (`true`), Cleanup, medians | %s, %s, %s | | |\n",
		med(serialPhases[0]), med(serialPhases[1]), med(serialPhases[2]))
	fmt.Printf("| 20 jobs at concurrency 4, wall time (two rounds) | %.1f s, %.1f s | %.1f s, %.1f s | %.2f× |\n",
		ca1.Seconds(), ca2.Seconds(), cb1.Seconds(), cb2.Seconds(), float64(ca1+ca2)/float64(cb1+cb2))
	fmt.Printf("| — of which Prepare, Run, Cleanup, medians (n=40) | %s, %s, %s | | |\n",
		med(concPhases[0]), med(concPhases[1]), med(concPhases[2]))
	fmt.Printf("| step `true` through Run vs a bare exec of `true` in the same pod (n=%d each), median (p90) | %s (%s) | %s (%s) | %.2f× |\n",
		2*rounds, med(ra), benchstat.Ms(ra.quantile(0.9)), med(rb), benchstat.Ms(rb.quantile(0.9)), float64(ra.quantile(0.5))/float64(rb.quantile(0.5)))
	fmt.Printf("\nthe executor's client-side rate limit, 20 jobs at concurrency 4, two rounds each:\n\n")
	fmt.Printf("| executor's client | wall time | Prepare, Run, Cleanup medians (n=40) | rate-limited calls | waited for the limiter, all jobs |\n|---|---|---|---|---|\n")
	fmt.Printf("| client-go's default, 5/s burst 10 (the executor's until it set its own; counted) | %.1f s, %.1f s | %s, %s, %s | %d | %.1f s |\n",
		cc1.Seconds(), cc2.Seconds(), med(countedPhases[0]), med(countedPhases[1]), med(countedPhases[2]), countedCalls, countedWait.Seconds())
	fmt.Printf("| 100/s burst 200 | %.1f s, %.1f s | %s, %s, %s | %d | %.1f s |\n",
		cf1.Seconds(), cf2.Seconds(), med(fastPhases[0]), med(fastPhases[1]), med(fastPhases[2]), fastCalls, fastWait.Seconds())
	fmt.Printf("| (baseline's client, the executor's %v/s burst %d) | | | %d | %.1f s |\n\n", clientQPS, clientBurst, 2*bareCalls, (bareWait1 + bareWait2).Seconds())

	// Where the time goes, from the observer's watch: medians over the
	// serial jobs, each mark relative to the start of the job.
	stopObs()
	<-obsDone
	obs.report(jobPods, barePods)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	left, err := ocs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range left.Items {
		t.Errorf("the benchmark left pod %s", p.Name)
	}
}

// countingLimiter adds up how long its callers waited for it.
type countingLimiter struct {
	flowcontrol.RateLimiter
	mu     sync.Mutex
	waited time.Duration
	calls  int
}

func (l *countingLimiter) Wait(ctx context.Context) error {
	start := time.Now()
	err := l.RateLimiter.Wait(ctx)
	l.mu.Lock()
	l.waited += time.Since(start)
	l.calls++
	l.mu.Unlock()
	return err
}

func (l *countingLimiter) reset() {
	l.mu.Lock()
	l.waited, l.calls = 0, 0
	l.mu.Unlock()
}

func (l *countingLimiter) total() (time.Duration, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.waited, l.calls
}

// bareTrue is the baseline: a pod running `true`, created, watched until
// it has Succeeded with exit code 0, deleted with grace 0 and watched
// until it is gone. It returns when the delete call was made.
func bareTrue(ctx context.Context, cs k8s.Interface, ns, name string, lbls map[string]string) (time.Time, error) {
	pods := cs.CoreV1().Pods(ns)
	created, err := pods.Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: lbls},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{
				Name: "main", Image: busyboxImage, ImagePullPolicy: corev1.PullIfNotPresent, Command: []string{"true"},
			}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return time.Time{}, fmt.Errorf("creating pod %s: %w", name, err)
	}
	var deleted time.Time
	rv := created.ResourceVersion
	// done says whether p shows the end the caller waits for.
	done := func(p *corev1.Pod) (bool, error) {
		if p.Status.Phase == corev1.PodFailed {
			return false, fmt.Errorf("pod %s failed: %s", name, summary(p))
		}
		if p.Status.Phase != corev1.PodSucceeded {
			return false, nil
		}
		for _, c := range p.Status.ContainerStatuses {
			if c.State.Terminated != nil {
				if c.State.Terminated.ExitCode != 0 {
					return false, fmt.Errorf("pod %s: exit code %d", name, c.State.Terminated.ExitCode)
				}
				return true, nil
			}
		}
		return false, nil
	}
	for {
		w, err := pods.Watch(ctx, metav1.ListOptions{
			FieldSelector:   fields.OneTermEqualSelector("metadata.name", name).String(),
			ResourceVersion: rv,
		})
		if err != nil {
			return deleted, fmt.Errorf("watching pod %s: %w", name, err)
		}
		for ev := range w.ResultChan() {
			switch ev.Type {
			case watch.Deleted:
				w.Stop()
				if deleted.IsZero() {
					return deleted, fmt.Errorf("pod %s was deleted before it succeeded", name)
				}
				return deleted, nil
			case watch.Added, watch.Modified:
				p, ok := ev.Object.(*corev1.Pod)
				if !ok {
					continue
				}
				rv = p.ResourceVersion
				if !deleted.IsZero() {
					continue
				}
				ok, err := done(p)
				if err != nil {
					w.Stop()
					return deleted, err
				}
				if ok {
					// Delete while the watch stays open: its Deleted event
					// says the pod is gone.
					zero := int64(0)
					deleted = time.Now()
					if err := pods.Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil && !apierrors.IsNotFound(err) {
						w.Stop()
						return deleted, fmt.Errorf("deleting pod %s: %w", name, err)
					}
				}
			}
		}
		w.Stop()
		// The watch ended (an expired resource version, a closed
		// connection): read the pod back and watch anew.
		p, err := pods.Get(ctx, name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err) && !deleted.IsZero():
			return deleted, nil
		case err != nil:
			return deleted, fmt.Errorf("reading pod %s back: %w", name, err)
		}
		rv = p.ResourceVersion
		if deleted.IsZero() {
			ok, err := done(p)
			if err != nil {
				return deleted, err
			}
			if ok {
				zero := int64(0)
				deleted = time.Now()
				if err := pods.Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil && !apierrors.IsNotFound(err) {
					return deleted, fmt.Errorf("deleting pod %s: %w", name, err)
				}
			}
		}
	}
}

// benchJob is one serial job of either side: its pod, its start and the
// ends of its phases (executor: Prepare, Run, Cleanup; bare pod: the
// delete call, gone).
type benchJob struct {
	pod   string
	start time.Time
	marks []time.Time
}

// podTimes are when a watch first saw a pod in a state.
type podTimes struct {
	added, scheduled, sandbox, started, terminated, succeeded, deleted time.Time
}

// podObserver watches the benchmark's pods and notes when each state
// arrives at the client: what the executor's and the baseline's own
// watches see at about the same moment.
type podObserver struct {
	mu   sync.Mutex
	pods map[string]*podTimes
}

func newPodObserver() *podObserver { return &podObserver{pods: map[string]*podTimes{}} }

func (o *podObserver) start(ctx context.Context, cs k8s.Interface, ns, sel string, done chan<- struct{}) error {
	list, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return err
	}
	rv := list.ResourceVersion
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			w, err := cs.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{LabelSelector: sel, ResourceVersion: rv, AllowWatchBookmarks: true})
			if err != nil {
				select {
				case <-ctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
				rv = "0" // from the API server's cache, whatever it holds
				continue
			}
			for ev := range w.ResultChan() {
				p, ok := ev.Object.(*corev1.Pod)
				if !ok {
					if ev.Type == watch.Error {
						rv = "0"
					}
					continue
				}
				rv = p.ResourceVersion
				if ev.Type != watch.Bookmark {
					o.note(ev.Type, p, time.Now())
				}
			}
			w.Stop()
		}
	}()
	return nil
}

func (o *podObserver) note(typ watch.EventType, p *corev1.Pod, now time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	pt := o.pods[p.Name]
	if pt == nil {
		pt = &podTimes{}
		o.pods[p.Name] = pt
	}
	first := func(t *time.Time, cond bool) {
		if cond && t.IsZero() {
			*t = now
		}
	}
	first(&pt.added, true)
	first(&pt.scheduled, p.Spec.NodeName != "")
	for _, c := range p.Status.Conditions {
		first(&pt.sandbox, c.Type == corev1.PodReadyToStartContainers && c.Status == corev1.ConditionTrue)
	}
	for _, c := range p.Status.ContainerStatuses {
		first(&pt.started, c.State.Running != nil || c.State.Terminated != nil)
		first(&pt.terminated, c.State.Terminated != nil)
	}
	first(&pt.succeeded, p.Status.Phase == corev1.PodSucceeded)
	first(&pt.deleted, typ == watch.Deleted)
}

// report prints the medians of each mark of the serial jobs, relative to
// each job's start.
func (o *podObserver) report(jobs, bare []benchJob) {
	o.mu.Lock()
	defer o.mu.Unlock()
	med := func(list []benchJob, at func(benchJob, *podTimes) time.Time) string {
		var s benchSamples
		for _, j := range list {
			pt := o.pods[j.pod]
			if pt == nil {
				continue
			}
			if t := at(j, pt); !t.IsZero() {
				s = append(s, t.Sub(j.start))
			}
		}
		if len(s) == 0 {
			return "—"
		}
		return benchstat.Ms(s.quantile(0.5))
	}
	fmt.Printf("\nwhere a serial job's time goes (median time since the job's start at which a watch saw it)\n\n")
	fmt.Printf("| mark | executor job | bare pod |\n|---|---|---|\n")
	row := func(name string, fa, fb func(benchJob, *podTimes) time.Time) {
		na := "—"
		if fa != nil {
			na = med(jobs, fa)
		}
		nb := "—"
		if fb != nil {
			nb = med(bare, fb)
		}
		fmt.Printf("| %s | %s | %s |\n", name, na, nb)
	}
	row("pod added", func(_ benchJob, p *podTimes) time.Time { return p.added }, func(_ benchJob, p *podTimes) time.Time { return p.added })
	row("scheduled (nodeName set)", func(_ benchJob, p *podTimes) time.Time { return p.scheduled }, func(_ benchJob, p *podTimes) time.Time { return p.scheduled })
	row("sandbox ready (PodReadyToStartContainers)", func(_ benchJob, p *podTimes) time.Time { return p.sandbox }, func(_ benchJob, p *podTimes) time.Time { return p.sandbox })
	row("a container started (status running or terminated)", func(_ benchJob, p *podTimes) time.Time { return p.started }, func(_ benchJob, p *podTimes) time.Time { return p.started })
	row("container terminated (exit code in the status)", nil, func(_ benchJob, p *podTimes) time.Time { return p.terminated })
	row("phase Succeeded", nil, func(_ benchJob, p *podTimes) time.Time { return p.succeeded })
	row("Prepare returned", func(j benchJob, _ *podTimes) time.Time { return j.marks[0] }, nil)
	row("Run returned / delete called", func(j benchJob, _ *podTimes) time.Time { return j.marks[1] }, func(j benchJob, _ *podTimes) time.Time { return j.marks[0] })
	row("Deleted event", func(_ benchJob, p *podTimes) time.Time { return p.deleted }, func(_ benchJob, p *podTimes) time.Time { return p.deleted })
	row("Cleanup returned / gone seen", func(j benchJob, _ *podTimes) time.Time { return j.marks[2] }, func(j benchJob, _ *podTimes) time.Time { return j.marks[1] })
}

// benchSamples are the durations of one measured thing.
type benchSamples []time.Duration

func (s benchSamples) quantile(q float64) time.Duration { return benchstat.Quantile(s, q) }

func benchTag() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(b)
}

// benchRounds is BERTH_K8S_BENCH, the number of what (default 10) per
// side of a benchmark; the test is skipped without it.
func benchRounds(t *testing.T, what string) int {
	v := os.Getenv("BERTH_K8S_BENCH")
	if v == "" {
		t.Skipf("set BERTH_K8S_BENCH=N to run the benchmark (N %s per side, default 10)", what)
	}
	if n, _ := strconv.Atoi(v); n > 0 {
		return n
	}
	return 10
}
