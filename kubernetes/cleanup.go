package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/berthci/berth/sdk"
)

// goneWait bounds how long a deletion waits for the pod to disappear
// beyond its grace period.
const goneWait = 30 * time.Second

// Cleanup implements sdk.Executor: it deletes the job's pod (which also
// ends any step still running) and waits until it is gone, and deletes
// the job's pull Secret. With a handle holding only the job's ID (after a
// failed Prepare) it deletes the pods and Secrets labelled with the job.
// Cleaning up twice is fine.
func (e *Executor) Cleanup(ctx context.Context, h sdk.Handle) error {
	cfg, c, err := e.current()
	if err != nil {
		return err
	}
	doing := fmt.Sprintf("cleaning up job %q", h.JobID)
	st, err := decodeState(h)
	if errors.Is(err, errNoState) {
		err := errors.Join(c.deleteJobPods(ctx, cfg, h.JobID), c.deleteJobSecrets(ctx, cfg.Namespace, h.JobID))
		if err != nil {
			return fmt.Errorf("%s: %w", doing, err)
		}
		return nil
	}
	if err != nil {
		return err
	}
	// The Secret goes even when the pod does not: it holds passwords.
	err = errors.Join(c.deletePod(ctx, st), c.deleteJobSecret(ctx, st))
	if err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	return nil
}

// deleteJobPods deletes the pods labelled with the job.
func (c *cluster) deleteJobPods(ctx context.Context, cfg settings, jobID string) error {
	sel := labels.Set{LabelJob: labelValue(jobID, 63)}.String()
	list, err := c.cs.CoreV1().Pods(cfg.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return fmt.Errorf("listing its pods on %s: %w", c.describe, err)
	}
	var errs []error
	for _, p := range list.Items {
		if p.Annotations[AnnotationJob] != jobID {
			continue
		}
		errs = append(errs, c.deletePod(ctx, jobState{Namespace: p.Namespace, Pod: p.Name, GracePeriod: int64(cfg.CleanupGracePeriod / time.Second)}))
	}
	return errors.Join(errs...)
}

// deleteJobSecret deletes the pull Secret the handle names, if any.
func (c *cluster) deleteJobSecret(ctx context.Context, st jobState) error {
	if st.Secret == "" {
		return nil
	}
	return c.deleteSecret(ctx, st.Namespace, st.Secret)
}

// deletePod deletes a pod and waits until it is gone.
func (c *cluster) deletePod(ctx context.Context, st jobState) error {
	pods := c.cs.CoreV1().Pods(st.Namespace)
	grace := st.GracePeriod
	err := pods.Delete(ctx, st.Pod, metav1.DeleteOptions{GracePeriodSeconds: &grace})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("deleting pod %s/%s on %s: %w", st.Namespace, st.Pod, c.describe, err)
	}
	wait := time.Duration(grace)*time.Second + goneWait
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	// A watch sees the deletion at once and costs no request of the
	// client's rate limit while it waits; a read between watches catches
	// what happened while none was open.
	for {
		p, err := pods.Get(ctx, st.Pod, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err == nil {
			if gone := c.watchGone(ctx, st, p.ResourceVersion); gone {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pod %s/%s is still there %s after it was deleted", st.Namespace, st.Pod, wait)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// watchGone watches the pod from resourceVersion and says whether it saw
// it deleted (false when the watch ended first).
func (c *cluster) watchGone(ctx context.Context, st jobState, resourceVersion string) bool {
	w, err := c.cs.CoreV1().Pods(st.Namespace).Watch(ctx, metav1.ListOptions{
		FieldSelector:   fields.OneTermEqualSelector("metadata.name", st.Pod).String(),
		ResourceVersion: resourceVersion,
	})
	if err != nil {
		return false
	}
	defer w.Stop()
	for ev := range w.ResultChan() {
		switch ev.Type {
		case watch.Deleted:
			return true
		case watch.Error:
			return false
		}
	}
	return false
}

// deleteExpired deletes the pods and pull Secrets of this runner whose
// expiry annotation is past: those of jobs whose plugin died without
// cleaning up.
func (e *Executor) deleteExpired(ctx context.Context, c *cluster, cfg settings) error {
	return errors.Join(e.deleteExpiredPods(ctx, c, cfg), e.deleteExpiredSecrets(ctx, c, cfg))
}

// deleteExpiredPods deletes the pods of this runner past their expiry.
func (e *Executor) deleteExpiredPods(ctx context.Context, c *cluster, cfg settings) error {
	sel := labels.Set{LabelRunner: labelValue(cfg.RunnerName, 63)}.String()
	list, err := c.cs.CoreV1().Pods(cfg.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return fmt.Errorf("listing the pods of runner %q in namespace %s on %s: %w", cfg.RunnerName, cfg.Namespace, c.describe, err)
	}
	now := e.now().Unix()
	var errs []error
	for _, p := range list.Items {
		t, err := strconv.ParseInt(p.Annotations[AnnotationExpires], 10, 64)
		if err != nil || t >= now {
			continue
		}
		e.logger().Info("deleting the pod of a job past its expiry", "pod", p.Namespace+"/"+p.Name, "job", p.Annotations[AnnotationJob])
		errs = append(errs, c.deletePod(ctx, jobState{Namespace: p.Namespace, Pod: p.Name, GracePeriod: int64(cfg.CleanupGracePeriod / time.Second)}))
	}
	return errors.Join(errs...)
}
