// Package kubernetes is berth's Kubernetes executor: each job runs in a pod
// of its own, with its services as extra containers of that pod.
//
// For a job, Prepare creates one pod: a "build" container from the job's
// image whose main process only keeps it alive, one container per service
// (reachable on localhost, and by its aliases through hostAliases that map
// them to 127.0.0.1), an emptyDir build volume mounted at builds_dir and a
// memory-backed emptyDir for the steps' scripts. It waits for the
// containers to run and fails at once, with the reason, when an image
// cannot be pulled, the pod cannot be scheduled, a container cannot start,
// or the pod is evicted or deleted.
//
// Each step runs with an exec in the build container under a small POSIX sh
// wrapper (internal/stepwrap) that reads the script from the exec's stdin
// (checking its size), runs it in a process group of its own and lets a
// cancel reach every process of the step (SIGTERM, SIGKILL after the grace
// period). The step runs detached from the exec, its stdout, stderr and
// status in files on the build volume that the exec follows: when the
// exec's connection breaks, another exec resumes each stream from the
// bytes received. stdout and stderr stay apart, and the exit code comes
// from the exec's status, never from the pod's phase. A step whose
// container dies is reported with the pod's reason (evicted — read from
// the pod's events, since kubelet may leave an evicted pod Succeeded —,
// deleted, out of memory). Upload and Download stream tar archives through exec,
// so the job's image needs sh and tar. No variable of the job is put into
// the pod: scripts (with masked and file variables) arrive over exec.
//
// A job with registry logins (GitLab sends them with the job) gets a
// Secret of type kubernetes.io/dockerconfigjson of its own, named after
// its pod, created before the pod and listed in its imagePullSecrets after
// the configured ones. The pod is its owner, so the garbage collector
// removes it with the pod.
//
// Every pod and pull Secret carries the labels berth.ci/job and
// berth.ci/runner and the annotation berth.ci/expires (a unix time: the
// job's timeout plus a margin). Cleanup deletes the job's pod and Secret;
// the first Configure of a plugin process deletes the pods and Secrets of
// its runner past their expiry.
//
// The cluster is reached through the host, kubeconfig and context
// settings, $KUBECONFIG or ~/.kube/config, or, when none of those exists
// and berth runs in a pod, the in-cluster configuration.
package kubernetes

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
	k8s "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/berthci/berth/sdk"
)

// Version is the Kubernetes executor's version.
const Version = "0.1.0"

// The executor's client-side request limit (see connect).
const (
	clientQPS   = 50
	clientBurst = 300
)

// Label and annotation keys set on every pod and Secret the executor
// creates.
const (
	LabelJob    = "berth.ci/job"
	LabelRunner = "berth.ci/runner"
	// AnnotationJob holds the job's ID as berth knows it (the label
	// holds a form of it that is a valid label value).
	AnnotationJob = "berth.ci/job-id"
	// AnnotationExpires is the unix time after which a pod left behind
	// may be deleted by any plugin of the same runner.
	AnnotationExpires = "berth.ci/expires"
)

// Executor is the Kubernetes executor. Its methods are safe for concurrent
// use.
type Executor struct {
	log *slog.Logger
	now func() time.Time
	env func(string) string

	mu     sync.Mutex
	cfg    settings
	swept  bool
	client *cluster
}

// cluster is a connection to the API server.
type cluster struct {
	rest *rest.Config
	cs   k8s.Interface
	// describe names the cluster in messages.
	describe string
}

// Option changes how New sets up the executor.
type Option func(*Executor)

// WithLogger makes the executor log to l instead of slog's default logger.
func WithLogger(l *slog.Logger) Option { return func(e *Executor) { e.log = l } }

// WithClock makes the executor read the time from now: it stamps the
// expiry annotation and decides what has expired with it.
func WithClock(now func() time.Time) Option { return func(e *Executor) { e.now = now } }

// WithEnv makes the executor read KUBECONFIG, HOME and the in-cluster
// variables through getenv instead of from its process environment.
func WithEnv(getenv func(string) string) Option { return func(e *Executor) { e.env = getenv } }

// New returns a Kubernetes executor with default settings.
func New(opts ...Option) *Executor {
	e := &Executor{now: time.Now, env: os.Getenv, cfg: defaultSettings()}
	for _, o := range opts {
		o(e)
	}
	return e
}

var _ sdk.Executor = (*Executor)(nil)

// Info implements sdk.Executor.
func (e *Executor) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{
		Name:        "kubernetes",
		Version:     Version,
		Description: "runs each job in a pod of its own on a Kubernetes cluster, with services as extra containers",
		Capabilities: sdk.Capabilities{
			Image:            true,
			Services:         true,
			CancelGracefully: true,
			Isolated:         true,
			Shells:           []string{"sh", "bash"},
		},
		Config: sdk.Schema(defaultSettings()),
	}, nil
}

// Configure implements sdk.Executor. The settings are checked here, the
// cluster when a job needs it: a configuration that cannot be read yet (no
// kubeconfig on this machine) is logged and reported by Prepare. The first
// Configure also deletes the pods and pull Secrets of this runner past
// their expiry; a cluster that does not answer then is logged, not an
// error.
func (e *Executor) Configure(ctx context.Context, raw map[string]any) error {
	cfg, err := decodeSettings(raw)
	if err != nil {
		return fmt.Errorf("kubernetes executor: %w", err)
	}
	if cfg.Kubeconfig != "" && !fileExists(cfg.Kubeconfig) {
		return fmt.Errorf("kubernetes executor: setting \"kubeconfig\": %s does not exist", cfg.Kubeconfig)
	}
	c, err := e.connect(cfg)
	if err != nil {
		e.logger().Warn("kubernetes executor: no cluster to talk to yet; jobs will fail until there is one", "error", err)
	}
	e.mu.Lock()
	e.cfg, e.client = cfg, c
	sweep := !e.swept && c != nil
	e.swept = e.swept || c != nil
	e.mu.Unlock()
	if sweep {
		if err := e.deleteExpired(ctx, c, cfg); err != nil {
			e.logger().Warn("could not delete the pods and Secrets earlier jobs left behind", "error", err)
		}
	}
	return nil
}

// connect builds a client from the connection settings; it does not talk
// to the cluster.
func (e *Executor) connect(cfg settings) (*cluster, error) {
	var rc *rest.Config
	var err error
	explicit := cfg.Kubeconfig != "" || cfg.Context != "" || e.env("KUBECONFIG") != ""
	if !explicit && e.env("KUBERNETES_SERVICE_HOST") != "" && !fileExists(homeKubeconfig(e.env)) {
		rc, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("reading the in-cluster configuration: %w", err)
		}
		if cfg.Host != "" {
			rc.Host = cfg.Host
		}
	} else {
		// Like kubectl: $KUBECONFIG (a list of files), else ~/.kube/config,
		// both read through e.env.
		rules := &clientcmd.ClientConfigLoadingRules{}
		if v := e.env("KUBECONFIG"); v != "" {
			rules.Precedence = strings.Split(v, string(os.PathListSeparator))
		} else if home := homeKubeconfig(e.env); home != "" {
			rules.Precedence = []string{home}
		}
		rules.ExplicitPath = cfg.Kubeconfig
		overrides := &clientcmd.ConfigOverrides{CurrentContext: cfg.Context}
		overrides.ClusterInfo.Server = cfg.Host
		rc, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides).ClientConfig()
		if err != nil {
			where := "$KUBECONFIG or ~/.kube/config"
			if cfg.Kubeconfig != "" {
				where = cfg.Kubeconfig
			}
			return nil, fmt.Errorf("reading the cluster's configuration from %s (settings \"kubeconfig\", \"context\", \"host\"): %w", where, err)
		}
	}
	rc.UserAgent = "berth-kubernetes-executor/" + Version
	// client-go's default client-side limit (5 requests/s, burst 10)
	// caps an executor at under 2 jobs/s whatever the cluster can do:
	// each job makes about three limited calls (watches and execs are
	// not limited). The API server protects itself (priority and
	// fairness); the client need not hold jobs back.
	rc.QPS, rc.Burst = clientQPS, clientBurst
	cs, err := k8s.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("making a client for %s: %w", rc.Host, err)
	}
	return &cluster{rest: rc, cs: cs, describe: "the Kubernetes API server at " + rc.Host}, nil
}

func homeKubeconfig(getenv func(string) string) string {
	if h := getenv("HOME"); h != "" {
		return h + "/.kube/config"
	}
	return ""
}

func fileExists(p string) bool {
	if p == "" {
		return false
	}
	_, err := os.Stat(p)
	return err == nil
}

func (e *Executor) logger() *slog.Logger {
	if e.log != nil {
		return e.log
	}
	return slog.Default()
}

// current returns the settings and the client, connecting with the
// defaults when Configure was not called.
func (e *Executor) current() (settings, *cluster, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.client == nil {
		c, err := e.connect(e.cfg)
		if err != nil {
			return e.cfg, nil, fmt.Errorf("kubernetes executor: %w", err)
		}
		e.client = c
	}
	return e.cfg, e.client, nil
}

// stateVersion is the version of jobState in handles.
const stateVersion = 1

// jobState is what a handle holds.
type jobState struct {
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	BuildDir  string `json:"build_dir"`
	// GracePeriod is cleanup_grace_period in seconds.
	GracePeriod int64 `json:"grace_period"`
	// Secret is the job's pull Secret, in Namespace ("": none). Added
	// without a new stateVersion: a handle without it is a job without
	// a Secret, and an older plugin reading it ignores it (the garbage
	// collector then deletes the Secret with the pod).
	Secret string `json:"secret,omitempty"`
}

func encodeState(jobID string, st jobState) (sdk.Handle, error) {
	b, err := json.Marshal(st)
	if err != nil {
		return sdk.Handle{}, fmt.Errorf("encoding the handle of job %q: %w", jobID, err)
	}
	return sdk.Handle{JobID: jobID, Version: stateVersion, State: b, BuildDir: st.BuildDir}, nil
}

var errNoState = errors.New("the handle holds no state")

func decodeState(h sdk.Handle) (jobState, error) {
	var st jobState
	if len(h.State) == 0 {
		return st, fmt.Errorf("job %q: %w", h.JobID, errNoState)
	}
	if h.Version != stateVersion {
		return st, fmt.Errorf("job %q: the handle has version %d; this kubernetes executor reads version %d", h.JobID, h.Version, stateVersion)
	}
	if err := json.Unmarshal(h.State, &st); err != nil || st.Pod == "" || st.Namespace == "" {
		return st, fmt.Errorf("job %q: the handle's state is not the kubernetes executor's (%v): %w", h.JobID, err, sdk.ErrNotFound)
	}
	return st, nil
}

// podName is the name of a job's pod: the same for every Prepare of one
// job ID, a valid DNS label, and different for different IDs.
func podName(jobID string) string {
	return "berth-" + labelValue(jobID, 50)
}

// labelValue turns s into a valid label value of at most max characters
// (max ≥ 20): lower-case letters, digits and '-' kept, a hash added when
// anything was changed, so that different inputs stay different.
func labelValue(s string, max int) string {
	if len(s) <= max && len(validation.IsDNS1123Label(s)) == 0 {
		return s
	}
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('-')
		}
	}
	sum := sha256.Sum256([]byte(s))
	hash := hex.EncodeToString(sum[:])[:12]
	keep := strings.Trim(b.String(), "-")
	if n := max - len(hash) - 1; len(keep) > n {
		keep = strings.Trim(keep[:n], "-")
	}
	if keep == "" {
		return "x" + hash
	}
	return keep + "-" + hash
}
