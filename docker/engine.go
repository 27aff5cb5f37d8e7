package docker

import (
	"errors"
	"fmt"
	"net"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"
)

// engine returns the client for the engine at host ("" means the one the
// environment names: DOCKER_HOST, else the default socket). Clients are
// made once per address and kept for the executor's life.
func (e *Executor) engine(host string) (*client.Client, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if c, ok := e.engines[host]; ok {
		return c, nil
	}
	opts := []client.Opt{client.WithUserAgent("berth-docker-executor/" + Version)}
	if h := e.env("DOCKER_HOST"); h != "" && host == "" {
		opts = append(opts, client.WithHost(h))
	}
	if host != "" {
		opts = append(opts, client.WithHost(host))
	}
	if e.env("DOCKER_CERT_PATH") != "" {
		opts = append(opts, client.WithTLSClientConfigFromEnv())
	}
	c, err := client.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker engine %s: %w", describeHost(host, e.env), err)
	}
	e.engines[host] = c
	return c, nil
}

// describeHost names the engine for messages: the address and where it
// came from.
func describeHost(host string, getenv func(string) string) string {
	switch {
	case host != "":
		return fmt.Sprintf("at %s (setting \"host\")", host)
	case getenv("DOCKER_HOST") != "":
		return fmt.Sprintf("at %s (DOCKER_HOST)", getenv("DOCKER_HOST"))
	default:
		return fmt.Sprintf("at %s (the default; set DOCKER_HOST or the setting \"host\" for another)", client.DefaultDockerHost)
	}
}

// engineError words an error from the engine for users: an engine that
// does not answer is named with its address and where that came from.
func (e *Executor) engineError(host, doing string, err error) error {
	if err == nil {
		return nil
	}
	if client.IsErrConnectionFailed(err) || isDialError(err) {
		return fmt.Errorf("%s: the docker engine %s does not answer; is dockerd running? %w", doing, describeHost(host, e.env), err)
	}
	return fmt.Errorf("%s: %w", doing, err)
}

// isDialError says whether err is a failure to reach the engine at all.
func isDialError(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "dial"
}

// localEngine says whether the engine runs on this machine, so that the
// addresses of its bridge networks can be reached from here.
func localEngine(c *client.Client) bool {
	u, err := client.ParseHostURL(c.DaemonHost())
	if err != nil {
		return false
	}
	switch u.Scheme {
	case "unix", "npipe":
		return true
	case "tcp", "http", "https":
		h := u.Hostname()
		return h == "localhost" || strings.HasPrefix(h, "127.") || h == "::1"
	}
	return false
}

// notFound says whether the engine answered that the object does not exist.
func notFound(err error) bool { return cerrdefs.IsNotFound(err) }
