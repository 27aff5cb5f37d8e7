package docker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/moby/moby/client"

	"github.com/berthci/berth/sdk"
)

// Cleanup implements sdk.Executor: it removes the job's containers (with
// their anonymous volumes, the build volume among them) and network, which also ends any step
// still running. With the handle's state it removes what Prepare made by
// name; with a handle holding only the job's ID (after a failed Prepare)
// it removes everything labelled with the job. It works from a plugin
// process that did not prepare the job; cleaning up twice is fine.
func (e *Executor) Cleanup(ctx context.Context, h sdk.Handle) error {
	doing := fmt.Sprintf("cleaning up job %q", h.JobID)
	st, err := decodeState(h)
	if err != nil {
		host := e.settings().Host
		c, err := e.engine(host)
		if err != nil {
			return err
		}
		return e.engineError(host, doing, e.removeJob(ctx, c, h.JobID))
	}
	c, err := e.engine(st.Host)
	if err != nil {
		return err
	}
	return e.engineError(st.Host, doing, e.removeState(ctx, c, st))
}

// removeState removes what a successful Prepare made.
func (e *Executor) removeState(ctx context.Context, c *client.Client, st jobState) error {
	var fns []func() error
	for _, name := range append([]string{st.Container}, st.Services...) {
		fns = append(fns, func() error {
			_, err := c.ContainerRemove(ctx, name, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
			if err != nil && !notFound(err) && !alreadyRemoving(err) {
				return fmt.Errorf("removing container %s: %w", name, err)
			}
			return nil
		})
	}
	if err := parallel(fns...); err != nil {
		return err
	}
	if st.Network == "" {
		return nil
	}
	_, err := c.NetworkRemove(ctx, st.Network, client.NetworkRemoveOptions{})
	if err != nil && !notFound(err) {
		return fmt.Errorf("removing network %s: %w", st.Network, err)
	}
	return nil
}

// removeJob removes everything labelled with job jobID.
func (e *Executor) removeJob(ctx context.Context, c *client.Client, jobID string) error {
	return e.removeLabelled(ctx, c, make(client.Filters).Add("label", LabelJob+"="+jobID), func(map[string]string) bool { return true })
}

// removeExpired removes what jobs of this runner left behind and is past
// its berth.expires time: jobs whose plugin died without cleaning up.
func (e *Executor) removeExpired(ctx context.Context, cfg settings) error {
	c, err := e.engine(cfg.Host)
	if err != nil {
		return err
	}
	now := e.now().Unix()
	expired := func(labels map[string]string) bool {
		t, err := strconv.ParseInt(labels[LabelExpires], 10, 64)
		return err == nil && t < now
	}
	err = e.removeLabelled(ctx, c, make(client.Filters).Add("label", LabelRunner+"="+cfg.RunnerName), expired)
	return e.engineError(cfg.Host, "removing the leftovers of expired jobs", err)
}

// removeLabelled removes the containers, then the networks and volumes,
// that match filters and for whose labels keep says so. Containers go
// first: a network or volume in use cannot be removed.
func (e *Executor) removeLabelled(ctx context.Context, c *client.Client, filters client.Filters, remove func(map[string]string) bool) error {
	var errs []error
	containers, err := c.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: filters})
	if err != nil {
		return fmt.Errorf("listing containers: %w", err)
	}
	var fns []func() error
	for _, ct := range containers.Items {
		if !remove(ct.Labels) {
			continue
		}
		fns = append(fns, func() error {
			_, err := c.ContainerRemove(ctx, ct.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
			if err != nil && !notFound(err) && !alreadyRemoving(err) {
				return fmt.Errorf("removing container %s (%s): %w", containerName(ct.Names), ct.Labels[LabelJob], err)
			}
			e.logger().Debug("removed container", "container", containerName(ct.Names), "job", ct.Labels[LabelJob])
			return nil
		})
	}
	if err := parallel(fns...); err != nil {
		errs = append(errs, err)
	}
	fns = nil
	networks, err := c.NetworkList(ctx, client.NetworkListOptions{Filters: filters})
	if err != nil {
		errs = append(errs, fmt.Errorf("listing networks: %w", err))
	}
	for _, n := range networks.Items {
		if !remove(n.Labels) {
			continue
		}
		fns = append(fns, func() error {
			if _, err := c.NetworkRemove(ctx, n.ID, client.NetworkRemoveOptions{}); err != nil && !notFound(err) {
				return fmt.Errorf("removing network %s (%s): %w", n.Name, n.Labels[LabelJob], err)
			}
			return nil
		})
	}
	volumes, err := c.VolumeList(ctx, client.VolumeListOptions{Filters: filters})
	if err != nil {
		errs = append(errs, fmt.Errorf("listing volumes: %w", err))
	}
	for _, v := range volumes.Items {
		if !remove(v.Labels) {
			continue
		}
		fns = append(fns, func() error {
			if _, err := c.VolumeRemove(ctx, v.Name, client.VolumeRemoveOptions{Force: true}); err != nil && !notFound(err) {
				return fmt.Errorf("removing volume %s (%s): %w", v.Name, v.Labels[LabelJob], err)
			}
			return nil
		})
	}
	if len(fns) > 0 {
		if err := parallel(fns...); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// alreadyRemoving says whether the engine refused a removal because one
// is under way (a concurrent Cleanup).
func alreadyRemoving(err error) bool {
	return strings.Contains(err.Error(), "already in progress")
}

func containerName(names []string) string {
	if len(names) == 0 {
		return "?"
	}
	return strings.TrimPrefix(names[0], "/")
}

// containerError words an engine error of a call on the job container;
// a container that is gone or stopped is named as such.
func (e *Executor) containerError(ctx context.Context, st jobState, doing string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", doing, context.Cause(ctx))
	}
	if notFound(err) {
		return fmt.Errorf("%s: the job container is gone (cleaned up already?): %w: %w", doing, sdk.ErrNotFound, err)
	}
	// Whatever the engine said ("is not running", or a failed exec upgrade
	// when the container stopped between creating and starting the exec),
	// a stopped job container is the cause worth naming.
	{
		c, cerr := e.engine(st.Host)
		if cerr == nil {
			ictx, cancel := context.WithTimeout(context.WithoutCancel(ctx), controlTimeout)
			defer cancel()
			if res, ierr := c.ContainerInspect(ictx, st.Container, client.ContainerInspectOptions{}); ierr == nil && res.Container.State != nil && !res.Container.State.Running {
				s := res.Container.State
				msg := fmt.Sprintf("%s: the job container (image %q) has stopped, exit code %d", doing, st.Image, s.ExitCode)
				if s.OOMKilled {
					msg += ", killed for running out of memory"
				}
				msg += " (an image's entrypoint must run the command it is given; set the job's entrypoint to [\"\"] to skip it)"
				if logs := serviceLogs(c, st.Container, serviceLogLines); logs != "" {
					msg += "; the last lines of its log:\n" + logs
				}
				return fmt.Errorf("%s: %w", msg, err)
			}
		}
	}
	return e.engineError(st.Host, doing, err)
}
