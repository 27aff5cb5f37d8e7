package kubernetes

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/berthci/berth/internal/stepwrap"
	"github.com/berthci/berth/sdk"
	"github.com/berthci/berth/sdk/archive"
)

// Prepare implements sdk.Executor: it creates the job's pod (after the
// Secret with the job's registry logins, when it has some) and waits for
// its containers to run. A second Prepare of the same job reuses its pod
// while that still runs, or replaces it. A pod that cannot run (an image
// that cannot be pulled, no node to schedule it on, a container that
// cannot start, an eviction) fails Prepare at once with the reason, and
// is deleted. A failed Prepare deletes the job's Secret.
func (e *Executor) Prepare(ctx context.Context, job sdk.Job) (sdk.Handle, error) {
	cfg, c, err := e.current()
	if err != nil {
		return sdk.Handle{}, err
	}
	pod, err := podSpec(cfg, job, e.now())
	if err != nil {
		return sdk.Handle{}, err
	}
	secret, err := pullSecret(pod, job)
	if err != nil {
		return sdk.Handle{}, err
	}
	st := jobState{
		Namespace:   pod.Namespace,
		Pod:         pod.Name,
		BuildDir:    path.Join(cfg.BuildsDir, archive.JobDirName(job.ID)),
		GracePeriod: int64(cfg.CleanupGracePeriod / time.Second),
	}
	if secret != nil {
		st.Secret = secret.Name
	}
	doing := fmt.Sprintf("preparing job %q: pod %s/%s", job.ID, st.Namespace, st.Pod)
	created, err := c.createPod(ctx, pod, secret, st)
	if err != nil {
		e.discard(ctx, c, st, false)
		return sdk.Handle{}, fmt.Errorf("%s: %w", doing, err)
	}
	if secret != nil {
		// Only a safety net (Cleanup and the expiry sweep delete the
		// Secret too): not worth failing the job for.
		if err := c.ownSecret(ctx, st.Namespace, st.Secret, created); err != nil {
			e.logger().Warn("the job's registry Secret is not tied to its pod; it is deleted at Cleanup or once expired", "job", job.ID, "error", err)
		}
	}
	if err := c.waitRunning(ctx, created, cfg.PollTimeout); err != nil {
		e.discard(ctx, c, st, true)
		if jobEntrypoint(job.Image) != nil && errors.Is(err, errBuildEnded) {
			return sdk.Handle{}, fmt.Errorf("%s: %w (the job's entrypoint must run the command it is given: exec \"$@\")", doing, err)
		}
		return sdk.Handle{}, fmt.Errorf("%s: %w", doing, err)
	}
	if jobEntrypoint(job.Image) != nil {
		if err := c.awaitKeepAlive(ctx, st, pod.Spec.Containers[0].Image); err != nil {
			e.discard(ctx, c, st, true)
			return sdk.Handle{}, fmt.Errorf("%s: %w", doing, err)
		}
	}
	return encodeState(job.ID, st)
}

// awaitKeepAlive follows the build container's log until the keep-alive's
// first line: the job's entrypoint ran it. An entrypoint that ends instead
// ends the container (and its log), which is named.
func (c *cluster) awaitKeepAlive(ctx context.Context, st jobState, image string) error {
	ctx, cancel := context.WithTimeout(ctx, controlTimeout)
	defer cancel()
	r, err := c.cs.CoreV1().Pods(st.Namespace).GetLogs(st.Pod, &corev1.PodLogOptions{Container: buildContainer, Follow: true}).Stream(ctx)
	if err != nil {
		return fmt.Errorf("following the build container's log: %w", err)
	}
	defer r.Close()
	sc := bufio.NewScanner(r)
	var last []string
	for sc.Scan() {
		if sc.Text() == stepwrap.ReadyLine {
			return nil
		}
		if last = append(last, sc.Text()); len(last) > 10 {
			last = last[1:]
		}
	}
	if ctx.Err() != nil {
		return fmt.Errorf("the job's entrypoint did not run the keep-alive within %s: %w", controlTimeout, context.Cause(ctx))
	}
	msg := fmt.Sprintf("the build container (image %q) stopped before the command it was given ran: the job's entrypoint must run it (exec \"$@\")", image)
	if len(last) > 0 {
		msg += "; the last lines of its log:\n" + strings.Join(last, "\n")
	}
	return errors.New(msg)
}

// createPod creates the job's pod, and first its pull Secret (nil for
// none) so that kubelet finds it at the first pull. A pod of an earlier
// Prepare of the job is reused while it runs, and replaced otherwise.
func (c *cluster) createPod(ctx context.Context, pod *corev1.Pod, secret *corev1.Secret, st jobState) (*corev1.Pod, error) {
	if secret != nil {
		if err := c.putSecret(ctx, secret); err != nil {
			return nil, err
		}
	}
	pods := c.cs.CoreV1().Pods(st.Namespace)
	var created *corev1.Pod
	create := func() (err error) {
		created, err = pods.Create(ctx, pod, metav1.CreateOptions{})
		return err
	}
	err := whileForbidden(ctx, create)
	if apierrors.IsAlreadyExists(err) {
		// A retried Prepare: reuse the pod unless it is on its way out.
		old, getErr := pods.Get(ctx, pod.Name, metav1.GetOptions{})
		if getErr == nil && old.Annotations[AnnotationJob] == pod.Annotations[AnnotationJob] && old.DeletionTimestamp == nil && !ended(old) {
			return old, nil
		}
		if err := c.deletePod(ctx, st); err != nil {
			return nil, fmt.Errorf("replacing the pod an earlier attempt made: %w", err)
		}
		// The old pod may have owned the Secret, which the garbage
		// collector would now delete: make a new one.
		if secret != nil {
			if err := c.putSecret(ctx, secret); err != nil {
				return nil, err
			}
		}
		err = whileForbidden(ctx, create)
	}
	if err != nil {
		return nil, fmt.Errorf("creating it on %s: %w", c.describe, err)
	}
	return created, nil
}

// discard deletes what a failed Prepare made: the Secret, and the pod
// when withPod (a pod Prepare could not create or replace is left to
// Cleanup, as before). It runs even when ctx has ended, and logs what it
// cannot delete: the Prepare's own error is the one to report.
func (e *Executor) discard(ctx context.Context, c *cluster, st jobState, withPod bool) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), controlTimeout)
	defer cancel()
	if withPod {
		if err := c.deletePod(ctx, st); err != nil {
			e.logger().Warn("could not delete the pod of a failed Prepare", "pod", st.Namespace+"/"+st.Pod, "error", err)
		}
	}
	if st.Secret != "" {
		if err := c.deleteSecret(ctx, st.Namespace, st.Secret); err != nil {
			e.logger().Warn("could not delete the registry Secret of a failed Prepare", "secret", st.Namespace+"/"+st.Secret, "error", err)
		}
	}
}

// waitRunning waits until every container of the pod runs, or the pod
// shows it never will.
func (c *cluster) waitRunning(ctx context.Context, pod *corev1.Pod, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	pods := c.cs.CoreV1().Pods(pod.Namespace)
	last := pod
	for {
		ready, err := podStatus(last)
		if err != nil || ready {
			return err
		}
		w, err := pods.Watch(ctx, metav1.ListOptions{
			FieldSelector:   fields.OneTermEqualSelector("metadata.name", pod.Name).String(),
			ResourceVersion: last.ResourceVersion,
		})
		if err != nil {
			return c.waitError(ctx, last, timeout, fmt.Errorf("watching it: %w", err))
		}
		for ev := range w.ResultChan() {
			switch ev.Type {
			case watch.Deleted:
				w.Stop()
				return errors.New("the pod was deleted before its containers ran")
			case watch.Added, watch.Modified:
				p, ok := ev.Object.(*corev1.Pod)
				if !ok {
					continue
				}
				last = p
				ready, err := podStatus(p)
				if err != nil || ready {
					w.Stop()
					return err
				}
			}
			// A watch.Error (an expired resource version, …): read the
			// pod again and watch anew.
			if ev.Type == watch.Error {
				break
			}
		}
		w.Stop()
		if ctx.Err() != nil {
			return c.waitError(ctx, last, timeout, nil)
		}
		p, err := pods.Get(ctx, pod.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			return errors.New("the pod was deleted before its containers ran")
		case err != nil:
			return c.waitError(ctx, last, timeout, fmt.Errorf("reading it back: %w", err))
		}
		last = p
	}
}

// waitError words the end of a wait that did not see the pod run.
func (c *cluster) waitError(ctx context.Context, last *corev1.Pod, timeout time.Duration, err error) error {
	if ctx.Err() != nil && errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
		return fmt.Errorf("its containers do not run after %s (setting \"poll_timeout\"); last seen: %s", timeout, summary(last))
	}
	if ctx.Err() != nil {
		return fmt.Errorf("stopped while waiting for it to run: %w", context.Cause(ctx))
	}
	return fmt.Errorf("%w (on %s)", err, c.describe)
}

// fatalWaiting are the reasons of a waiting container that will not run
// without a change to the job or the cluster.
var fatalWaiting = map[string]string{
	"ErrImagePull":               "the image cannot be pulled",
	"ImagePullBackOff":           "the image cannot be pulled",
	"ErrImageNeverPull":          "the image is not on the node and the pull policy is never",
	"InvalidImageName":           "the image name is invalid",
	"CreateContainerConfigError": "the container's configuration is invalid",
	"CreateContainerError":       "the container cannot be created",
	"RunContainerError":          "the container cannot be started",
	"CrashLoopBackOff":           "the container keeps crashing",
	"PreStartHookError":          "the container's start hook failed",
}

// podStatus says whether every container of the pod runs, or why the pod
// will never run the job.
func podStatus(p *corev1.Pod) (bool, error) {
	if p.DeletionTimestamp != nil {
		return false, errors.New("the pod is being deleted")
	}
	if err := podEnded(p); err != nil {
		return false, err
	}
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodScheduled && cond.Status == corev1.ConditionFalse && cond.Reason == corev1.PodReasonUnschedulable {
			return false, fmt.Errorf("the pod cannot be scheduled: %s", cond.Message)
		}
	}
	images := map[string]string{}
	for _, ct := range p.Spec.Containers {
		images[ct.Name] = ct.Image
	}
	running := 0
	for _, cs := range p.Status.ContainerStatuses {
		switch {
		case cs.State.Waiting != nil:
			if what, ok := fatalWaiting[cs.State.Waiting.Reason]; ok {
				return false, fmt.Errorf("%s (image %q): %s: %s: %s", containerRole(cs.Name), images[cs.Name], what, cs.State.Waiting.Reason, cs.State.Waiting.Message)
			}
		case cs.State.Terminated != nil:
			return false, fmt.Errorf("%s (image %q) ended at start: %s", containerRole(cs.Name), images[cs.Name], terminated(cs.State.Terminated))
		case cs.State.Running != nil:
			running++
		}
	}
	return running == len(p.Spec.Containers), nil
}

// errBuildEnded marks a build container that ended while the pod had not.
var errBuildEnded = errors.New("the build container ended")

// podEnded describes a pod that has stopped running (nil if it has not).
func podEnded(p *corev1.Pod) error {
	if p.Status.Phase != corev1.PodFailed && p.Status.Phase != corev1.PodSucceeded {
		for _, cs := range p.Status.ContainerStatuses {
			if cs.Name == buildContainer && cs.State.Terminated != nil {
				return fmt.Errorf("%w: %s", errBuildEnded, terminated(cs.State.Terminated))
			}
		}
		return nil
	}
	if p.Status.Reason == "Evicted" {
		return fmt.Errorf("the pod was evicted from node %s: %s", p.Spec.NodeName, p.Status.Message)
	}
	for _, cs := range p.Status.ContainerStatuses {
		if cs.State.Terminated != nil && cs.State.Terminated.Reason == "OOMKilled" {
			return fmt.Errorf("%s ran out of memory (OOMKilled): raise its memory limit", containerRole(cs.Name))
		}
	}
	msg := strings.TrimSpace(p.Status.Reason + " " + p.Status.Message)
	if msg == "" {
		msg = "no reason given"
	}
	return fmt.Errorf("the pod has ended (phase %s): %s", p.Status.Phase, msg)
}

func ended(p *corev1.Pod) bool { return podEnded(p) != nil }

func terminated(t *corev1.ContainerStateTerminated) string {
	s := fmt.Sprintf("exit code %d", t.ExitCode)
	if t.Reason != "" {
		s += ", " + t.Reason
	}
	if t.Message != "" {
		s += ": " + strings.TrimSpace(t.Message)
	}
	return s
}

func containerRole(name string) string {
	if name == buildContainer {
		return "the build container"
	}
	return "service container " + name
}

// summary describes where a pod is, for a timeout.
func summary(p *corev1.Pod) string {
	parts := []string{"phase " + string(p.Status.Phase)}
	for _, cond := range p.Status.Conditions {
		if cond.Status != corev1.ConditionTrue && cond.Message != "" {
			parts = append(parts, fmt.Sprintf("%s: %s", cond.Type, cond.Message))
		}
	}
	for _, cs := range p.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil {
			parts = append(parts, fmt.Sprintf("%s waiting: %s %s", containerRole(cs.Name), w.Reason, w.Message))
		}
	}
	return strings.Join(parts, "; ")
}

// podGone reads the pod back and describes why it no longer runs steps:
// deleted, being deleted, evicted, out of memory (nil when it still runs
// or cannot be read).
func (c *cluster) podGone(ctx context.Context, st jobState) error {
	p, err := c.cs.CoreV1().Pods(st.Namespace).Get(ctx, st.Pod, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return fmt.Errorf("the job's pod %s/%s was deleted%s", st.Namespace, st.Pod, c.evicted(ctx, st, nil))
	case err != nil:
		return nil
	case p.DeletionTimestamp != nil:
		return fmt.Errorf("the job's pod %s/%s is being deleted%s", st.Namespace, st.Pod, c.evicted(ctx, st, p))
	}
	for _, cs := range p.Status.ContainerStatuses {
		if cs.Name == buildContainer && cs.LastTerminationState.Terminated != nil && cs.LastTerminationState.Terminated.Reason == "OOMKilled" {
			return errors.New("the build container ran out of memory (OOMKilled): raise its memory limit")
		}
	}
	if err := podEnded(p); err != nil {
		if why := c.evicted(ctx, st, p); why != "" && p.Status.Reason != "Evicted" {
			return fmt.Errorf("the job's pod %s/%s was evicted%s", st.Namespace, st.Pod, why)
		}
		return fmt.Errorf("the job's pod %s/%s: %w", st.Namespace, st.Pod, err)
	}
	return nil
}

// evicted says why the pod was evicted or preempted (", by …: reason"), or
// "" when it was not. The pod's DisruptionTarget condition tells for an
// eviction through the API (a node drain) or a preemption; kubelet's own
// evictions (node pressure, a storage limit) are only sure to show in the
// pod's events: kubelet kills the containers, and the pod may then end up
// Succeeded with no reason in its status.
func (c *cluster) evicted(ctx context.Context, st jobState, p *corev1.Pod) string {
	if p != nil {
		for _, cond := range p.Status.Conditions {
			if cond.Type == corev1.DisruptionTarget && cond.Status == corev1.ConditionTrue {
				return fmt.Sprintf(" (%s: %s)", cond.Reason, strings.TrimSpace(cond.Message))
			}
		}
	}
	set := fields.Set{"involvedObject.kind": "Pod", "involvedObject.name": st.Pod, "reason": "Evicted"}
	if p != nil {
		// Not an earlier pod of the same name (a retried Prepare).
		set["involvedObject.uid"] = string(p.UID)
	}
	sel := set.AsSelector().String()
	events, err := c.cs.CoreV1().Events(st.Namespace).List(ctx, metav1.ListOptions{FieldSelector: sel})
	if err != nil || len(events.Items) == 0 {
		// Without the right to read events, the pod's status is all there is.
		return ""
	}
	ev := events.Items[len(events.Items)-1]
	return fmt.Sprintf(" by %s: %s", ev.Source.Component, strings.TrimSpace(ev.Message))
}
