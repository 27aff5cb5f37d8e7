package kubernetes

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/berthci/berth/internal/stepwrap"
	"github.com/berthci/berth/sdk"
)

const (
	// buildContainer is the name of the container steps run in.
	buildContainer = "build"
	// stepsDir holds the steps' scripts and pid files: a memory-backed
	// emptyDir, so scripts (with their variables) never reach a disk.
	stepsDir = "/.berth"
	// expiryMargin is added to the job's timeout for the expiry annotation.
	expiryMargin = time.Hour
	// defaultJobTimeout is assumed for a job without a timeout.
	defaultJobTimeout = 3 * time.Hour
)

// jobEntrypoint is the job's own entrypoint for the build container, nil
// when it has none or clears the image's with [""]. The image's own
// ENTRYPOINT is never run: the keep-alive replaces it (as GitLab's
// kubernetes executor does), unless the job names one.
func jobEntrypoint(img sdk.Image) []string {
	if len(img.Entrypoint) == 0 || (len(img.Entrypoint) == 1 && img.Entrypoint[0] == "") {
		return nil
	}
	return img.Entrypoint
}

// podSpec builds the job's pod from the settings and the job.
func podSpec(cfg settings, job sdk.Job, now time.Time) (*corev1.Pod, error) {
	image := job.Image.Name
	if image == "" {
		image = cfg.Image
	}
	if image == "" {
		return nil, fmt.Errorf("job %q names no image and the setting \"image\" of [runners.kubernetes] is empty", job.ID)
	}
	policy, err := jobPullPolicy(cfg, job.Image, "the job's image")
	if err != nil {
		return nil, err
	}
	timeout := job.Timeout
	if timeout <= 0 {
		timeout = defaultJobTimeout
	}
	labels := map[string]string{}
	for k, v := range job.Labels {
		if len(validation.IsQualifiedName(k)) == 0 && len(validation.IsValidLabelValue(v)) == 0 {
			labels[k] = v
		}
	}
	maps.Copy(labels, cfg.PodLabels)
	labels[LabelJob] = labelValue(job.ID, 63)
	labels[LabelRunner] = labelValue(cfg.RunnerName, 63)
	annotations := maps.Clone(cfg.PodAnnotations)
	if annotations == nil {
		annotations = map[string]string{}
	}
	annotations[AnnotationJob] = job.ID
	annotations[AnnotationExpires] = strconv.FormatInt(now.Add(timeout+expiryMargin).Unix(), 10)

	var security *corev1.SecurityContext
	if cfg.Privileged {
		security = &corev1.SecurityContext{Privileged: new(true)}
	}
	mounts := []corev1.VolumeMount{{Name: "builds", MountPath: cfg.BuildsDir}, {Name: "berth", MountPath: stepsDir}}
	containers := []corev1.Container{{
		Name:            buildContainer,
		Image:           image,
		ImagePullPolicy: policy,
		Command:         stepwrap.KeepAlive(),
		// The keep-alive waits on its stdin in an image without sleep.
		Stdin: true,
		// The step wrapper, so that each step's exec names it in a few
		// bytes instead of carrying it (its text is no secret).
		Env:             []corev1.EnvVar{{Name: stepwrap.Env, Value: escapeEnv(stepwrap.Script())}},
		WorkingDir:      cfg.BuildsDir,
		VolumeMounts:    mounts,
		Resources:       cfg.build,
		SecurityContext: security,
	}}
	var hostnames []string
	for i, s := range job.Services {
		if s.Image.Name == "" {
			return nil, fmt.Errorf("service %d of job %q names no image", i+1, job.ID)
		}
		policy, err := jobPullPolicy(cfg, s.Image, fmt.Sprintf("service %s", s.Image.Name))
		if err != nil {
			return nil, err
		}
		c := corev1.Container{
			Name:            fmt.Sprintf("svc-%d", i),
			Image:           s.Image.Name,
			ImagePullPolicy: policy,
			Command:         s.Image.Entrypoint,
			Args:            s.Command,
			Resources:       cfg.service,
			SecurityContext: security,
		}
		for _, k := range slices.Sorted(maps.Keys(s.Variables)) {
			c.Env = append(c.Env, corev1.EnvVar{Name: k, Value: s.Variables[k]})
		}
		containers = append(containers, c)
		for _, a := range serviceAliases(s) {
			if !slices.Contains(hostnames, a) {
				hostnames = append(hostnames, a)
			}
		}
	}
	if ep := jobEntrypoint(job.Image); ep != nil {
		// The entrypoint gets the keep-alive as its command, which it
		// must run (exec "$@"): Prepare waits for the keep-alive's line.
		containers[0].Command, containers[0].Args = ep, stepwrap.KeepAlive()
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:        podName(job.ID),
			Namespace:   cfg.Namespace,
			Labels:      labels,
			Annotations: annotations,
		},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: new(int64(cfg.CleanupGracePeriod / time.Second)),
			Containers:                    containers,
			Volumes: []corev1.Volume{
				{Name: "builds", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
				{Name: "berth", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}},
			},
			ServiceAccountName: cfg.ServiceAccount,
			NodeSelector:       maps.Clone(cfg.NodeSelector),
			Tolerations:        slices.Clone(cfg.tolerations),
			// A copy: the settings are shared by every job.
			Affinity:        cfg.affinity.DeepCopy(),
			SecurityContext: podSecurity(cfg),
		},
	}
	if len(hostnames) > 0 {
		pod.Spec.HostAliases = []corev1.HostAlias{{IP: "127.0.0.1", Hostnames: hostnames}}
	}
	for _, s := range cfg.ImagePullSecrets {
		pod.Spec.ImagePullSecrets = append(pod.Spec.ImagePullSecrets, corev1.LocalObjectReference{Name: s})
	}
	// The job's own registry logins come after the runner's Secrets,
	// which keep the place the configuration gives them.
	if hasCredentials(job) {
		pod.Spec.ImagePullSecrets = append(pod.Spec.ImagePullSecrets, corev1.LocalObjectReference{Name: pullSecretName(job.ID)})
	}
	return pod, nil
}

// podSecurity is the pod's securityContext: pod-level, so that the build
// and the service containers all run as run_as_user and run_as_group.
// No fsGroup: the emptyDir volumes are writable by any user already, and
// an fsGroup would add a supplementary group the image did not ask for.
func podSecurity(cfg settings) *corev1.PodSecurityContext {
	if cfg.RunAsUser == imageID && cfg.RunAsGroup == imageID {
		return nil
	}
	sc := &corev1.PodSecurityContext{}
	if cfg.RunAsUser != imageID {
		sc.RunAsUser = new(cfg.RunAsUser)
	}
	if cfg.RunAsGroup != imageID {
		sc.RunAsGroup = new(cfg.RunAsGroup)
	}
	return sc
}

// jobPullPolicy is the pull policy for an image: the first the job asks
// for, else the setting.
func jobPullPolicy(cfg settings, img sdk.Image, what string) (corev1.PullPolicy, error) {
	want := cfg.PullPolicy
	if len(img.PullPolicy) > 0 {
		want = img.PullPolicy[0]
	}
	p, ok := pullPolicy(want)
	if !ok {
		return "", fmt.Errorf("%s (%s) asks for pull policy %q; the kubernetes executor knows always, if-not-present and never", what, img.Name, want)
	}
	return p, nil
}

// serviceAliases are the host names a service is reachable by: its
// aliases, or the ones GitLab derives from its image name
// (registry.example.com/group/postgres:15 → registry.example.com-group-postgres),
// keeping only valid host names.
func serviceAliases(s sdk.Service) []string {
	names := s.Aliases
	if len(names) == 0 {
		name := s.Image.Name
		if i := strings.Index(name, "@"); i >= 0 {
			name = name[:i]
		}
		if i := strings.LastIndex(name, ":"); i > strings.LastIndex(name, "/") {
			name = name[:i]
		}
		names = []string{strings.ReplaceAll(name, "/", "-")}
	}
	var out []string
	for _, n := range names {
		if len(validation.IsDNS1123Subdomain(n)) == 0 {
			out = append(out, n)
		}
	}
	return out
}

// escapeEnv keeps Kubernetes from expanding an environment variable's
// value: kubelet replaces $(NAME) with another variable's value and $$
// with $, so every $ is doubled. (Found by the wrapper's "$$", its shell's
// process ID, arriving as "$".)
func escapeEnv(v string) string { return strings.ReplaceAll(v, "$", "$$") }
