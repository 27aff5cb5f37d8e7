package docker

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
)

// serviceLogLines is how many of a failed service's last log lines an
// error shows.
const serviceLogLines = 20

// waitForService waits until every TCP port the service's container
// exposes accepts connections, for at most wait_for_services_timeout. It
// fails at once when the service exits. The ports are dialled from this
// machine at the service's address on its network, which needs an engine
// on this machine; with a remote engine only "running" is checked.
func (e *Executor) waitForService(ctx context.Context, c *client.Client, p plan, s serviceRef) error {
	timeout := p.cfg.WaitForServicesTimeout
	waitCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	inspect := func() (container.InspectResponse, error) {
		res, err := c.ContainerInspect(ctx, s.name, client.ContainerInspectOptions{})
		return res.Container, err
	}
	info, err := inspect()
	if err != nil {
		return e.engineError(p.cfg.Host, fmt.Sprintf("job %q: service %q", p.job.ID, s.image.name), err)
	}
	var ports []string
	if info.Config != nil {
		for port := range info.Config.ExposedPorts {
			if port.Proto() == "tcp" {
				ports = append(ports, port.Port())
			}
		}
	}
	slices.Sort(ports)
	addr := serviceAddress(info, p)
	local := localEngine(c)
	for _, port := range ports {
		for {
			if info.State != nil && !info.State.Running {
				return e.serviceFailed(c, p, s, fmt.Sprintf("exited with code %d before it listened on TCP port %s", info.State.ExitCode, port))
			}
			if !local || !addr.IsValid() {
				break
			}
			d := net.Dialer{Timeout: time.Second}
			conn, err := d.DialContext(waitCtx, "tcp", net.JoinHostPort(addr.String(), port))
			if err == nil {
				conn.Close()
				break
			}
			select {
			case <-waitCtx.Done():
				if ctx.Err() != nil {
					return fmt.Errorf("job %q: waiting for service %q: %w", p.job.ID, s.image.name, context.Cause(ctx))
				}
				return e.serviceFailed(c, p, s, fmt.Sprintf("did not listen on TCP port %s within %s (wait_for_services_timeout)", port, timeout))
			case <-time.After(200 * time.Millisecond):
			}
			if info, err = inspect(); err != nil {
				return e.engineError(p.cfg.Host, fmt.Sprintf("job %q: service %q", p.job.ID, s.image.name), err)
			}
		}
	}
	return nil
}

// serviceAddress is where the service can be dialled from this machine.
func serviceAddress(info container.InspectResponse, p plan) netip.Addr {
	if info.NetworkSettings == nil {
		return netip.Addr{}
	}
	nets := info.NetworkSettings.Networks
	for _, name := range []string{p.network, p.cfg.NetworkMode, "bridge"} {
		if ep, ok := nets[name]; ok && ep != nil && ep.IPAddress.IsValid() {
			return ep.IPAddress
		}
	}
	if p.cfg.NetworkMode == "host" {
		return netip.MustParseAddr("127.0.0.1")
	}
	return netip.Addr{}
}

// serviceFailed words a service that did not come up, with the last lines
// of its log.
func (e *Executor) serviceFailed(c *client.Client, p plan, s serviceRef, what string) error {
	logs := serviceLogs(c, s.name, serviceLogLines)
	alias := ""
	if len(s.aliases) > 0 {
		alias = fmt.Sprintf(" (alias %s)", strings.Join(s.aliases, ", "))
	}
	msg := fmt.Sprintf("job %q: service %q%s %s", p.job.ID, s.image.name, alias, what)
	if logs == "" {
		return fmt.Errorf("%s; it logged nothing", msg)
	}
	return fmt.Errorf("%s; the last lines of its log:\n%s", msg, logs)
}

// serviceLogs returns the last n lines of a container's log (stdout and
// stderr together), or "" when there are none or they cannot be read.
func serviceLogs(c *client.Client, containerID string, n int) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := c.ContainerLogs(ctx, containerID, client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true, Tail: strconv.Itoa(n)})
	if err != nil {
		return ""
	}
	defer r.Close()
	var buf bytes.Buffer
	_, _ = stdcopy.StdCopy(&buf, &buf, r)
	return strings.TrimRight(buf.String(), "\n")
}
