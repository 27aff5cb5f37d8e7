package kubernetes

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/berthci/berth/sdk"
)

// The pull policies, as GitLab names them.
const (
	PullAlways       = "always"
	PullIfNotPresent = "if-not-present"
	PullNever        = "never"
)

// settings are the executor's settings ([runners.kubernetes] in config.toml).
type settings struct {
	Host                           string            `mapstructure:"host" help:"API server URL; replaces the server of the kubeconfig (empty: the kubeconfig's, or the in-cluster configuration when berth runs in a pod)"`
	Kubeconfig                     string            `mapstructure:"kubeconfig" help:"kubeconfig file; empty: $KUBECONFIG, else ~/.kube/config, else the in-cluster configuration"`
	Context                        string            `mapstructure:"context" help:"kubeconfig context to use; empty: the current context"`
	Namespace                      string            `mapstructure:"namespace" help:"namespace the job pods are created in"`
	Image                          string            `mapstructure:"image" help:"image for jobs that name none"`
	PullPolicy                     string            `mapstructure:"pull_policy" help:"image pull policy: always, if-not-present or never (a job's own pull_policy replaces it)"`
	ImagePullSecrets               []string          `mapstructure:"image_pull_secrets" help:"names of Secrets of the namespace used to pull images"`
	ServiceAccount                 string            `mapstructure:"service_account" help:"service account of the job pods; empty: the namespace's default"`
	CPURequest                     string            `mapstructure:"cpu_request" help:"CPU request of the build container (Kubernetes quantity: 500m, 1.5)"`
	CPULimit                       string            `mapstructure:"cpu_limit" help:"CPU limit of the build container (Kubernetes quantity: 500m, 2)"`
	MemoryRequest                  sdk.Size          `mapstructure:"memory_request" help:"memory request of the build container (e.g. 256m, 1g); 0: none"`
	MemoryLimit                    sdk.Size          `mapstructure:"memory_limit" help:"memory limit of the build container (e.g. 512m, 2g); 0: none"`
	ServiceCPURequest              string            `mapstructure:"service_cpu_request" help:"CPU request of each service container (Kubernetes quantity)"`
	ServiceCPULimit                string            `mapstructure:"service_cpu_limit" help:"CPU limit of each service container (Kubernetes quantity)"`
	ServiceMemoryRequest           sdk.Size          `mapstructure:"service_memory_request" help:"memory request of each service container; 0: none"`
	ServiceMemoryLimit             sdk.Size          `mapstructure:"service_memory_limit" help:"memory limit of each service container; 0: none"`
	EphemeralStorageRequest        sdk.Size          `mapstructure:"ephemeral_storage_request" help:"local storage request of the build container (its writable layer, logs and the build volume; e.g. 1g); 0: none"`
	EphemeralStorageLimit          sdk.Size          `mapstructure:"ephemeral_storage_limit" help:"local storage limit of the build container (e.g. 10g); kubelet evicts a pod past it, and the job fails naming the eviction; 0: none"`
	ServiceEphemeralStorageRequest sdk.Size          `mapstructure:"service_ephemeral_storage_request" help:"local storage request of each service container; 0: none"`
	ServiceEphemeralStorageLimit   sdk.Size          `mapstructure:"service_ephemeral_storage_limit" help:"local storage limit of each service container; 0: none"`
	NodeSelector                   map[string]string `mapstructure:"node_selector" help:"node labels a job pod must be scheduled on (key=value,…)"`
	Tolerations                    map[string]string `mapstructure:"tolerations" help:"taints job pods tolerate: KEY or KEY=VALUE mapped to an effect (NoSchedule, PreferNoSchedule, NoExecute; empty: any)"`
	PodLabels                      map[string]string `mapstructure:"pod_labels" help:"extra labels of job pods"`
	PodAnnotations                 map[string]string `mapstructure:"pod_annotations" help:"extra annotations of job pods"`
	Privileged                     bool              `mapstructure:"privileged" help:"run the build and service containers privileged"`
	PollTimeout                    time.Duration     `mapstructure:"poll_timeout" help:"how long a job pod may take to be scheduled and have its containers running"`
	CleanupGracePeriod             time.Duration     `mapstructure:"cleanup_grace_period" help:"grace period of a job pod when it is deleted; 0: killed at once"`
	BuildsDir                      string            `mapstructure:"builds_dir" help:"where the build volume (an emptyDir) is mounted; a job's build directory is below it"`
	RunnerName                     string            `mapstructure:"runner_name" help:"value of the runner label; at start, pods and registry Secrets of this runner past their expiry are deleted"`
	Affinity                       string            `mapstructure:"affinity" help:"affinity of the job pods: a Kubernetes Affinity (nodeAffinity, podAffinity, podAntiAffinity, in Kubernetes' field names) as JSON or YAML, e.g. {\"nodeAffinity\":{\"requiredDuringSchedulingIgnoredDuringExecution\":{\"nodeSelectorTerms\":[{\"matchExpressions\":[{\"key\":\"pool\",\"operator\":\"In\",\"values\":[\"ci\"]}]}]}}}; empty: none"`
	RunAsUser                      int64             `mapstructure:"run_as_user" help:"user ID the build and service containers run as (the pod's securityContext.runAsUser); -1: the image's user. The build volume is an emptyDir, writable by any user, so no fsGroup is set"`
	RunAsGroup                     int64             `mapstructure:"run_as_group" help:"group ID the build and service containers run as (the pod's securityContext.runAsGroup); -1: the image's group"`

	// Parsed forms, filled in by decodeSettings.
	build, service corev1.ResourceRequirements
	tolerations    []corev1.Toleration
	affinity       *corev1.Affinity
}

func defaultSettings() settings {
	name, err := os.Hostname()
	if err != nil || name == "" {
		name = "berth"
	}
	return settings{
		Namespace:   "default",
		PullPolicy:  PullIfNotPresent,
		PollTimeout: 3 * time.Minute,
		BuildsDir:   "/builds",
		RunnerName:  name,
		RunAsUser:   imageID,
		RunAsGroup:  imageID,
	}
}

// decodeSettings decodes and checks raw settings.
func decodeSettings(raw map[string]any) (settings, error) {
	cfg := defaultSettings()
	if err := sdk.DecodeConfig(raw, &cfg); err != nil {
		return cfg, err
	}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if msgs := validation.IsDNS1123Label(cfg.Namespace); len(msgs) > 0 {
		bad("setting \"namespace\": %q is not a namespace name: %s", cfg.Namespace, strings.Join(msgs, "; "))
	}
	if cfg.PullPolicy == "" {
		cfg.PullPolicy = PullIfNotPresent
	}
	if _, ok := pullPolicy(cfg.PullPolicy); !ok {
		bad("setting \"pull_policy\": %q is not a pull policy (always, if-not-present, never)", cfg.PullPolicy)
	}
	for _, s := range cfg.ImagePullSecrets {
		if msgs := validation.IsDNS1123Subdomain(s); len(msgs) > 0 {
			bad("setting \"image_pull_secrets\": %q is not a Secret name", s)
		}
	}
	if cfg.ServiceAccount != "" {
		if msgs := validation.IsDNS1123Subdomain(cfg.ServiceAccount); len(msgs) > 0 {
			bad("setting \"service_account\": %q is not a service account name", cfg.ServiceAccount)
		}
	}
	var err error
	if cfg.build, err = resources("", cfg.CPURequest, cfg.CPULimit, cfg.MemoryRequest, cfg.MemoryLimit, cfg.EphemeralStorageRequest, cfg.EphemeralStorageLimit); err != nil {
		errs = append(errs, err)
	}
	if cfg.service, err = resources("service_", cfg.ServiceCPURequest, cfg.ServiceCPULimit, cfg.ServiceMemoryRequest, cfg.ServiceMemoryLimit, cfg.ServiceEphemeralStorageRequest, cfg.ServiceEphemeralStorageLimit); err != nil {
		errs = append(errs, err)
	}
	for _, k := range slices.Sorted(mapKeys(cfg.Tolerations)) {
		t, err := toleration(k, cfg.Tolerations[k])
		if err != nil {
			bad("setting \"tolerations\": %w", err)
			continue
		}
		cfg.tolerations = append(cfg.tolerations, t)
	}
	for _, m := range []struct {
		name string
		kv   map[string]string
		vals bool
	}{{"node_selector", cfg.NodeSelector, true}, {"pod_labels", cfg.PodLabels, true}, {"pod_annotations", cfg.PodAnnotations, false}} {
		for k, v := range m.kv {
			if msgs := validation.IsQualifiedName(k); len(msgs) > 0 {
				bad("setting %q: %q is not a valid key: %s", m.name, k, strings.Join(msgs, "; "))
			}
			if m.vals {
				if msgs := validation.IsValidLabelValue(v); len(msgs) > 0 {
					bad("setting %q: the value %q of %q is not a valid label value: %s", m.name, v, k, strings.Join(msgs, "; "))
				}
			}
		}
	}
	if cfg.PollTimeout <= 0 {
		bad("setting \"poll_timeout\" must be positive, got %s", cfg.PollTimeout)
	}
	if cfg.CleanupGracePeriod < 0 {
		bad("setting \"cleanup_grace_period\" must not be negative, got %s", cfg.CleanupGracePeriod)
	}
	if cfg.BuildsDir == "" {
		cfg.BuildsDir = "/builds"
	}
	if !path.IsAbs(cfg.BuildsDir) || path.Clean(cfg.BuildsDir) == "/" {
		bad("setting \"builds_dir\" must be an absolute path below /, got %q", cfg.BuildsDir)
	}
	cfg.BuildsDir = path.Clean(cfg.BuildsDir)
	if strings.TrimSpace(cfg.RunnerName) == "" {
		bad("setting \"runner_name\" must not be empty")
	}
	if cfg.affinity, err = parseAffinity(cfg.Affinity); err != nil {
		bad("setting \"affinity\": %w", err)
	}
	for _, id := range []struct {
		name string
		v    int64
	}{{"run_as_user", cfg.RunAsUser}, {"run_as_group", cfg.RunAsGroup}} {
		if err := checkID(id.v); err != nil {
			bad("setting %q: %w", id.name, err)
		}
	}
	return cfg, errors.Join(errs...)
}

// imageID is the value of run_as_user and run_as_group that keeps the
// image's user or group.
const imageID = -1

// checkID checks a run_as_user or run_as_group value. The upper bound is
// the API server's: it refuses IDs above 2^31-1 in a securityContext, and
// saying so here beats a failed Prepare on every job.
func checkID(id int64) error {
	switch {
	case id < imageID:
		return fmt.Errorf("%d is not an ID: use -1 for the image's own, or 0 to %d", id, math.MaxInt32)
	case id > math.MaxInt32:
		return fmt.Errorf("%d is above %d, the largest ID Kubernetes accepts", id, math.MaxInt32)
	}
	return nil
}

// parseAffinity decodes the affinity setting: a Kubernetes Affinity as
// JSON or YAML. Like the API server it matches field names exactly and
// refuses unknown and repeated ones, so that a misspelt rule is an error
// here rather than an affinity that silently allows every node. Empty
// text (or an empty object) is no affinity.
func parseAffinity(text string) (*corev1.Affinity, error) {
	if strings.TrimSpace(text) == "" {
		return nil, nil
	}
	data := []byte(text)
	// JSON is tried as such first: YAML refuses tabs that JSON allows.
	var syntax any
	if jsonErr := json.Unmarshal(data, &syntax); jsonErr != nil {
		var yamlErr error
		if data, yamlErr = yaml.YAMLToJSONStrict(data); yamlErr != nil {
			return nil, fmt.Errorf("neither valid JSON (%v) nor valid YAML (%w)", jsonErr, yamlErr)
		}
	}
	var a corev1.Affinity
	strict, err := kjson.UnmarshalStrict(data, &a)
	if err != nil {
		return nil, fmt.Errorf("not a Kubernetes Affinity (nodeAffinity, podAffinity, podAntiAffinity): %w", err)
	}
	if len(strict) > 0 {
		return nil, fmt.Errorf("not a Kubernetes Affinity (nodeAffinity, podAffinity, podAntiAffinity): %w", errors.Join(strict...))
	}
	if a == (corev1.Affinity{}) {
		return nil, nil
	}
	return &a, nil
}

func mapKeys(m map[string]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// pullPolicy maps a GitLab pull policy to Kubernetes'.
func pullPolicy(p string) (corev1.PullPolicy, bool) {
	switch p {
	case PullAlways:
		return corev1.PullAlways, true
	case PullIfNotPresent:
		return corev1.PullIfNotPresent, true
	case PullNever:
		return corev1.PullNever, true
	}
	return "", false
}

// resources parses the cpu, memory and ephemeral storage settings with the
// given name prefix.
func resources(prefix, cpuReq, cpuLim string, memReq, memLim, storageReq, storageLim sdk.Size) (corev1.ResourceRequirements, error) {
	var r corev1.ResourceRequirements
	var errs []error
	set := func(list *corev1.ResourceList, name corev1.ResourceName, q resource.Quantity) {
		if *list == nil {
			*list = corev1.ResourceList{}
		}
		(*list)[name] = q
	}
	for _, c := range []struct {
		key, text string
		list      *corev1.ResourceList
	}{{"cpu_request", cpuReq, &r.Requests}, {"cpu_limit", cpuLim, &r.Limits}} {
		if strings.TrimSpace(c.text) == "" {
			continue
		}
		q, err := resource.ParseQuantity(strings.TrimSpace(c.text))
		if err != nil || q.Sign() <= 0 {
			errs = append(errs, fmt.Errorf("setting %q: %q is not a positive CPU quantity (e.g. 500m, 1.5)", prefix+c.key, c.text))
			continue
		}
		set(c.list, corev1.ResourceCPU, q)
	}
	for _, m := range []struct {
		key  string
		name corev1.ResourceName
		size sdk.Size
		list *corev1.ResourceList
	}{
		{"memory_request", corev1.ResourceMemory, memReq, &r.Requests},
		{"memory_limit", corev1.ResourceMemory, memLim, &r.Limits},
		{"ephemeral_storage_request", corev1.ResourceEphemeralStorage, storageReq, &r.Requests},
		{"ephemeral_storage_limit", corev1.ResourceEphemeralStorage, storageLim, &r.Limits},
	} {
		switch {
		case m.size < 0:
			errs = append(errs, fmt.Errorf("setting %q must not be negative", prefix+m.key))
		case m.size > 0:
			set(m.list, m.name, *resource.NewQuantity(int64(m.size), resource.BinarySI))
		}
	}
	for _, res := range []struct {
		name corev1.ResourceName
		key  string
	}{{corev1.ResourceCPU, "cpu"}, {corev1.ResourceMemory, "memory"}, {corev1.ResourceEphemeralStorage, "ephemeral_storage"}} {
		req, okReq := r.Requests[res.name]
		lim, okLim := r.Limits[res.name]
		if okReq && okLim && req.Cmp(lim) > 0 {
			errs = append(errs, fmt.Errorf("setting %q (%s) must not be above %q (%s)", prefix+res.key+"_request", req.String(), prefix+res.key+"_limit", lim.String()))
		}
	}
	return r, errors.Join(errs...)
}

// toleration parses one entry of the tolerations setting.
func toleration(key, effect string) (corev1.Toleration, error) {
	t := corev1.Toleration{Operator: corev1.TolerationOpExists}
	k, v, hasValue := strings.Cut(key, "=")
	t.Key = k
	if hasValue {
		t.Operator, t.Value = corev1.TolerationOpEqual, v
	}
	if k != "" {
		if msgs := validation.IsQualifiedName(k); len(msgs) > 0 {
			return t, fmt.Errorf("%q is not a taint key: %s", k, strings.Join(msgs, "; "))
		}
	}
	switch e := corev1.TaintEffect(effect); e {
	case "", corev1.TaintEffectNoSchedule, corev1.TaintEffectPreferNoSchedule, corev1.TaintEffectNoExecute:
		t.Effect = e
	default:
		return t, fmt.Errorf("%q: effect %q is not NoSchedule, PreferNoSchedule or NoExecute", key, effect)
	}
	return t, nil
}
