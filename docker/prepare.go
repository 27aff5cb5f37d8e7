package docker

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/berthci/berth/internal/stepwrap"
	"github.com/berthci/berth/sdk"
)

// stateVersion is the version of jobState in the handles Prepare returns.
const stateVersion = 1

const (
	// expiryMargin is added to a job's timeout for its berth.expires
	// label: the after_script and the clean-up run past the timeout.
	expiryMargin = 15 * time.Minute
	// defaultJobTimeout stands in for a job that has none.
	defaultJobTimeout = time.Hour
)

// jobState is what a prepared job keeps in its Handle.State.
type jobState struct {
	// Host is the engine address the job was prepared on ("" for the
	// environment's).
	Host      string `json:"host,omitempty"`
	Container string `json:"container"`
	BuildDir  string `json:"build_dir"`
	User      string `json:"user,omitempty"`
	Memory    int64  `json:"memory,omitempty"`
	Image     string `json:"image"`
	// What else Prepare made, for a Cleanup without label look-ups (the
	// build volume goes with the job container).
	Network  string   `json:"network,omitempty"`
	Services []string `json:"services,omitempty"`
}

func decodeState(h sdk.Handle) (jobState, error) {
	var st jobState
	if len(h.State) == 0 {
		return st, fmt.Errorf("job %q has no prepared container: %w", h.JobID, sdk.ErrNotFound)
	}
	if h.Version != stateVersion {
		return st, fmt.Errorf("the handle of job %q has state version %d; this docker executor (%s) reads version %d", h.JobID, h.Version, Version, stateVersion)
	}
	if err := json.Unmarshal(h.State, &st); err != nil {
		return st, fmt.Errorf("the handle of job %q holds no valid state: %w", h.JobID, err)
	}
	if st.Container == "" || !path.IsAbs(st.BuildDir) {
		return st, fmt.Errorf("the handle of job %q names no container or build directory", h.JobID)
	}
	return st, nil
}

// resourceName turns a job ID into the base of its resources' names:
// letters, digits, '.', '_' and '-' are kept, anything else becomes '_',
// and a hash of the ID is added when something was changed, so that two
// IDs never share a name.
func resourceName(jobID string) string {
	var b strings.Builder
	for _, r := range jobID {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	name := b.String()
	if name == jobID && len(name) <= 64 && name != "" {
		return "berth-" + name
	}
	sum := sha256.Sum256([]byte(jobID))
	if len(name) > 40 {
		name = name[:40]
	}
	return "berth-" + name + "-" + hex.EncodeToString(sum[:6])
}

// plan is everything Prepare decided before it touches the engine.
type plan struct {
	cfg      settings
	job      sdk.Job
	base     string
	image    imageRef
	services []serviceRef
	labels   func(role string) map[string]string
	buildDir string
	network  string // the per-job network, or "" for none
}

type imageRef struct {
	name     string
	policies []string
	auth     string
}

type serviceRef struct {
	svc     sdk.Service
	image   imageRef
	name    string
	aliases []string
}

// Prepare implements sdk.Executor: it pulls the images as the pull
// policies say, makes the job's network (when it has services), starts
// the services and the job container with its build volume, and waits for
// the services' TCP ports. A retried Prepare replaces what an earlier attempt
// for the same job made: a name already taken makes it remove everything
// labelled with the job and start again (a job with services does that
// first: older engines allow two networks of one name). On error, what
// was made is left for Cleanup, which the host always calls.
func (e *Executor) Prepare(ctx context.Context, job sdk.Job) (sdk.Handle, error) {
	cfg := e.settings()
	p, err := e.plan(job, cfg)
	if err != nil {
		return sdk.Handle{}, err
	}
	c, err := e.engine(cfg.Host)
	if err != nil {
		return sdk.Handle{}, err
	}
	removeFirst := len(p.services) > 0
	var st jobState
	for attempt := 0; ; attempt++ {
		if removeFirst {
			if err := e.removeJob(ctx, c, job.ID); err != nil {
				return sdk.Handle{}, e.engineError(cfg.Host, fmt.Sprintf("preparing job %q", job.ID), err)
			}
		}
		st, err = e.prepare(ctx, c, p)
		if err == nil || attempt > 0 || removeFirst || !errors.Is(err, errNameTaken) {
			break
		}
		removeFirst = true
	}
	if err != nil {
		return sdk.Handle{}, err
	}
	b, err := json.Marshal(st)
	if err != nil {
		return sdk.Handle{}, fmt.Errorf("encoding the handle of job %q: %w", job.ID, err)
	}
	return sdk.Handle{JobID: job.ID, Version: stateVersion, State: b, BuildDir: p.buildDir}, nil
}

// errNameTaken marks a Prepare that found a name of its resources taken.
var errNameTaken = errors.New("name taken")

// prepare makes the job's resources as planned.
func (e *Executor) prepare(ctx context.Context, c *client.Client, p plan) (jobState, error) {
	cfg := p.cfg
	st := jobState{
		Host: cfg.Host, BuildDir: p.buildDir, User: cfg.User, Memory: int64(cfg.Memory), Image: p.image.name,
		Network: p.network,
	}
	for _, s := range p.services {
		st.Services = append(st.Services, s.name)
	}
	// The images and the network do not depend on each other.
	err := parallel(
		func() error { return e.ensureImages(ctx, c, p) },
		func() error {
			if p.network == "" {
				return nil
			}
			_, err := c.NetworkCreate(ctx, p.network, client.NetworkCreateOptions{Driver: "bridge", Labels: p.labels("network")})
			return e.engineError(cfg.Host, fmt.Sprintf("creating the network of job %q", p.job.ID), err)
		},
	)
	if err != nil {
		return st, err
	}
	startJob := func() (err error) {
		st.Container, err = e.startJobContainer(ctx, c, p)
		return err
	}
	var fns []func() error
	for _, s := range p.services {
		fns = append(fns, func() error { return e.startService(ctx, c, p, s) })
	}
	if p.links() {
		// Links need the services running first.
		err = parallel(fns...)
		if err == nil {
			err = startJob()
		}
	} else {
		err = parallel(append(fns, startJob)...)
	}
	if err != nil {
		return st, err
	}
	if cfg.WaitForServicesTimeout > 0 && len(p.services) > 0 {
		var waits []func() error
		for _, s := range p.services {
			waits = append(waits, func() error { return e.waitForService(ctx, c, p, s) })
		}
		if err := parallel(waits...); err != nil {
			return st, err
		}
	}
	return st, nil
}

// createError words a failed ContainerCreate; a name in use (an earlier
// attempt's container) is marked with errNameTaken.
func (e *Executor) createError(host, doing string, err error) error {
	if cerrdefs.IsConflict(err) {
		return fmt.Errorf("%s: %w: %w", doing, errNameTaken, err)
	}
	return e.engineError(host, doing, err)
}

// plan checks the job against the settings and decides names, images,
// pull policies and logins.
func (e *Executor) plan(job sdk.Job, cfg settings) (plan, error) {
	switch job.Shell {
	case "", "sh", "bash":
	default:
		return plan{}, fmt.Errorf("job %q wants shell %q; the docker executor runs sh and bash", job.ID, job.Shell)
	}
	p := plan{cfg: cfg, job: job, base: resourceName(job.ID)}
	p.buildDir = path.Join(cfg.BuildsDir, strings.TrimPrefix(p.base, "berth-"))
	if len(job.Services) > 0 && cfg.NetworkMode == "" {
		p.network = p.base + "-net"
	}
	expires := e.now().Add(max(job.Timeout, 0) + expiryMargin)
	if job.Timeout <= 0 {
		expires = expires.Add(defaultJobTimeout)
	}
	p.labels = func(role string) map[string]string {
		l := maps.Clone(job.Labels)
		if l == nil {
			l = map[string]string{}
		}
		l[LabelJob] = job.ID
		l[LabelRunner] = cfg.RunnerName
		l[LabelExpires] = strconv.FormatInt(expires.Unix(), 10)
		l[LabelRole] = role
		return l
	}
	ref := func(img sdk.Image, what string) (imageRef, error) {
		if err := checkAllowed(img.Name, cfg.AllowedImages); err != nil {
			return imageRef{}, fmt.Errorf("%s: %w", what, err)
		}
		policies, err := pullPolicies(img.Name, img.PullPolicy, cfg)
		if err != nil {
			return imageRef{}, fmt.Errorf("%s: %w", what, err)
		}
		auth, err := registryAuth(img.Name, job, cfg)
		if err != nil {
			return imageRef{}, fmt.Errorf("%s: %w", what, err)
		}
		return imageRef{name: img.Name, policies: policies, auth: auth}, nil
	}
	img := job.Image
	if img.Name == "" {
		img.Name = cfg.Image
	}
	if img.Name == "" {
		return plan{}, fmt.Errorf("job %q names no image, and the runner has no default (setting \"image\" of [runners.docker])", job.ID)
	}
	var err error
	if p.image, err = ref(img, fmt.Sprintf("job %q", job.ID)); err != nil {
		return plan{}, err
	}
	for i, s := range job.Services {
		if s.Image.Name == "" {
			return plan{}, fmt.Errorf("job %q: service %d names no image", job.ID, i+1)
		}
		r, err := ref(s.Image, fmt.Sprintf("job %q, service %q", job.ID, s.Image.Name))
		if err != nil {
			return plan{}, err
		}
		aliases := slices.Clone(s.Aliases)
		for _, a := range serviceAliases(s.Image.Name) {
			if !slices.Contains(aliases, a) {
				aliases = append(aliases, a)
			}
		}
		p.services = append(p.services, serviceRef{svc: s, image: r, name: fmt.Sprintf("%s-svc-%d", p.base, i), aliases: aliases})
	}
	return p, nil
}

// serviceAliases are the host names GitLab derives from a service's image
// name: without tag or digest, slashes as "__" and as "-". Parts that
// cannot be a host name (a registry's port) are dropped.
func serviceAliases(image string) []string {
	name, _, _ := strings.Cut(image, "@")
	if i := strings.LastIndex(name, ":"); i > strings.LastIndex(name, "/") {
		name = name[:i]
	}
	parts := strings.Split(name, "/")
	if h, _, ok := strings.Cut(parts[0], ":"); ok && len(parts) > 1 {
		parts[0] = h
	}
	var out []string
	for _, sep := range []string{"__", "-"} {
		a := strings.Join(parts, sep)
		if validHostname(a) && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

func validHostname(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// ensureImages gets the job's image and its services' images, at once.
func (e *Executor) ensureImages(ctx context.Context, c *client.Client, p plan) error {
	refs := []imageRef{p.image}
	for _, s := range p.services {
		if !slices.ContainsFunc(refs, func(r imageRef) bool { return r.name == s.image.name }) {
			refs = append(refs, s.image)
		}
	}
	fns := make([]func() error, len(refs))
	for i, r := range refs {
		fns[i] = func() error {
			err := ensureImage(ctx, c, r.name, r.policies, r.auth)
			if err != nil && (client.IsErrConnectionFailed(err) || isDialError(err)) {
				return e.engineError(p.cfg.Host, fmt.Sprintf("job %q: image %q", p.job.ID, r.name), err)
			}
			if err != nil {
				return fmt.Errorf("job %q: %w", p.job.ID, err)
			}
			return nil
		}
	}
	return parallel(fns...)
}

// startJobContainer creates and starts the job container and returns its
// ID.
func (e *Executor) startJobContainer(ctx context.Context, c *client.Client, p plan) (string, error) {
	cfg := p.cfg
	doing := fmt.Sprintf("job %q: starting the job container from image %q", p.job.ID, p.image.name)
	conf := &container.Config{
		Image:      p.image.name,
		Cmd:        stepwrap.KeepAlive(),
		WorkingDir: p.buildDir,
		Labels:     p.labels("job"),
		User:       cfg.User,
		OpenStdin:  true,
	}
	if p.job.Image.Entrypoint != nil {
		conf.Entrypoint = p.job.Image.Entrypoint
	}
	hc := &container.HostConfig{
		// The build volume: anonymous, so that removing the container
		// removes it too, but labelled like everything else.
		Mounts: []mount.Mount{{Type: mount.TypeVolume, Target: cfg.BuildsDir, VolumeOptions: &mount.VolumeOptions{Labels: p.labels("build")}}},
		// The steps' scripts and pid files; sticky and writable by all, as
		// steps may run as any user.
		Tmpfs:       map[string]string{berthDir: "mode=1777"},
		Privileged:  cfg.Privileged,
		CapAdd:      cfg.CapAdd,
		CapDrop:     cfg.CapDrop,
		SecurityOpt: cfg.SecurityOpt,
		ExtraHosts:  cfg.ExtraHosts,
		DNS:         cfg.dns,
		ShmSize:     int64(cfg.ShmSize),
		Resources: container.Resources{
			Memory:     int64(cfg.Memory),
			MemorySwap: cfg.memorySwap,
			NanoCPUs:   int64(cfg.CPUs * 1e9),
			Devices:    cfg.devices,
		},
	}
	for _, m := range cfg.mounts {
		if b := m.bind(); b != "" {
			hc.Binds = append(hc.Binds, b)
			continue
		}
		if conf.Volumes == nil {
			conf.Volumes = map[string]struct{}{}
		}
		conf.Volumes[m.target] = struct{}{}
	}
	switch {
	case p.network != "":
		hc.NetworkMode = container.NetworkMode(p.network)
	case cfg.NetworkMode != "":
		hc.NetworkMode = container.NetworkMode(cfg.NetworkMode)
		if p.links() {
			for _, s := range p.services {
				for _, a := range s.aliases {
					hc.Links = append(hc.Links, s.name+":"+a)
				}
			}
		}
	}
	res, err := c.ContainerCreate(ctx, client.ContainerCreateOptions{Name: p.base, Config: conf, HostConfig: hc})
	if err != nil {
		return "", e.createError(cfg.Host, doing, err)
	}
	if cfg.User != "" {
		// The engine makes the working directory as root; the build
		// directory must belong to the user the steps run as.
		if err := e.makeBuildDir(ctx, c, res.ID, p.buildDir); err != nil {
			return "", e.engineError(cfg.Host, doing, err)
		}
	}
	if _, err := c.ContainerStart(ctx, res.ID, client.ContainerStartOptions{}); err != nil {
		if strings.Contains(err.Error(), "executable file not found") {
			return "", fmt.Errorf("%s: the image has no sh, which the docker executor runs scripts with: %w", doing, err)
		}
		return "", e.engineError(cfg.Host, doing, err)
	}
	if err := e.awaitKeepAlive(ctx, c, res.ID, p.image.name); err != nil {
		return res.ID, fmt.Errorf("%s: %w", doing, err)
	}
	return res.ID, nil
}

// errReady stops reading the job container's log at the keep-alive's first line.
var errReady = errors.New("ready")

// readyWatch fails with errReady once stepwrap.ReadyLine has been written to it.
type readyWatch struct{ buf []byte }

func (w *readyWatch) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	if bytes.Contains(w.buf, []byte(stepwrap.ReadyLine+"\n")) {
		return len(p), errReady
	}
	if len(w.buf) > 64<<10 {
		// An entrypoint that talks before it runs its command: keep the end.
		w.buf = w.buf[len(w.buf)-len(stepwrap.ReadyLine)-1:]
	}
	return len(p), nil
}

// awaitKeepAlive waits until the job container's keep-alive runs, following
// its log. Without it, a step's exec could start in a container whose
// entrypoint is about to end it, and run, or not, by chance.
func (e *Executor) awaitKeepAlive(ctx context.Context, c *client.Client, id, image string) error {
	ctx, cancel := context.WithTimeout(ctx, controlTimeout)
	defer cancel()
	r, err := c.ContainerLogs(ctx, id, client.ContainerLogsOptions{ShowStdout: true, Follow: true})
	if err != nil {
		return fmt.Errorf("following its log: %w", err)
	}
	defer r.Close()
	_, err = stdcopy.StdCopy(&readyWatch{}, io.Discard, r)
	switch {
	case errors.Is(err, errReady):
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("its main process did not start within %s: %w", controlTimeout, context.Cause(ctx))
	}
	// The log ended: the container stopped before the keep-alive ran.
	msg := "the job container (image " + strconv.Quote(image) + ") has stopped"
	ictx, icancel := context.WithTimeout(context.WithoutCancel(ctx), controlTimeout)
	defer icancel()
	if res, ierr := c.ContainerInspect(ictx, id, client.ContainerInspectOptions{}); ierr == nil && res.Container.State != nil {
		msg += fmt.Sprintf(", exit code %d", res.Container.State.ExitCode)
	}
	msg += " before the command it was given ran (an image's entrypoint must run the command it is given; set the job's entrypoint to [\"\"] to skip it)"
	if logs := serviceLogs(c, id, serviceLogLines); logs != "" {
		msg += "; the last lines of its log:\n" + logs
	}
	return errors.New(msg)
}

// makeBuildDir creates the build directory (and its .tmp sibling the
// scripts use) in the stopped container, owned by the container's user.
func (e *Executor) makeBuildDir(ctx context.Context, c *client.Client, containerID, buildDir string) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range []string{buildDir, buildDir + ".tmp"} {
		if err := tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(d, "/") + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: time.Now()}); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	_, err := c.CopyToContainer(ctx, containerID, client.CopyToContainerOptions{DestinationPath: "/", Content: &buf, CopyUIDGID: true})
	if err != nil {
		return fmt.Errorf("creating the build directory %s for the configured user: %w", buildDir, err)
	}
	return nil
}

// startService creates and starts one service container on the job's
// network under its aliases.
func (e *Executor) startService(ctx context.Context, c *client.Client, p plan, s serviceRef) error {
	cfg := p.cfg
	doing := fmt.Sprintf("job %q: starting service %q", p.job.ID, s.image.name)
	labels := p.labels("service")
	labels["berth.service"] = s.image.name
	conf := &container.Config{Image: s.image.name, Labels: labels}
	if s.svc.Image.Entrypoint != nil {
		conf.Entrypoint = s.svc.Image.Entrypoint
	}
	if len(s.svc.Command) > 0 {
		conf.Cmd = s.svc.Command
	}
	for _, k := range slices.Sorted(maps.Keys(s.svc.Variables)) {
		conf.Env = append(conf.Env, k+"="+s.svc.Variables[k])
	}
	hc := &container.HostConfig{
		Privileged:  cfg.Privileged,
		SecurityOpt: cfg.SecurityOpt,
		ExtraHosts:  cfg.ExtraHosts,
		DNS:         cfg.dns,
	}
	var nc *network.NetworkingConfig
	switch {
	case p.network != "":
		hc.NetworkMode = container.NetworkMode(p.network)
		nc = &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{p.network: {Aliases: s.aliases}}}
	case cfg.NetworkMode != "":
		hc.NetworkMode = container.NetworkMode(cfg.NetworkMode)
		if userNetwork(cfg.NetworkMode) {
			nc = &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{cfg.NetworkMode: {Aliases: s.aliases}}}
		}
	}
	res, err := c.ContainerCreate(ctx, client.ContainerCreateOptions{Name: s.name, Config: conf, HostConfig: hc, NetworkingConfig: nc})
	if err != nil {
		return e.createError(cfg.Host, doing, err)
	}
	if _, err := c.ContainerStart(ctx, res.ID, client.ContainerStartOptions{}); err != nil {
		return e.engineError(cfg.Host, doing, err)
	}
	return nil
}

// links says whether the job container reaches its services through
// legacy links: on the default bridge, which has no DNS for names.
func (p plan) links() bool {
	return p.network == "" && len(p.services) > 0 && (p.cfg.NetworkMode == "bridge" || p.cfg.NetworkMode == "default")
}

// userNetwork says whether a network_mode names a user-defined network,
// on which containers find each other by name.
func userNetwork(mode string) bool {
	switch {
	case mode == "bridge", mode == "default", mode == "host", mode == "none", strings.HasPrefix(mode, "container:"):
		return false
	}
	return true
}

// parallel runs fns at once and joins their errors.
func parallel(fns ...func() error) error {
	if len(fns) == 1 {
		return fns[0]()
	}
	errs := make([]error, len(fns))
	var wg sync.WaitGroup
	for i, f := range fns {
		wg.Go(func() { errs[i] = f() })
	}
	wg.Wait()
	return errors.Join(errs...)
}
