package kubernetes

import (
	"bytes"
	"errors"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/berthci/berth/internal/stepwrap"
	"github.com/berthci/berth/sdk"
)

func TestSettingsDefaults(t *testing.T) {
	cfg, err := decodeSettings(map[string]any{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Namespace != "default" || cfg.PullPolicy != PullIfNotPresent || cfg.PollTimeout != 3*time.Minute || cfg.BuildsDir != "/builds" || cfg.Privileged ||
		cfg.RunAsUser != -1 || cfg.RunAsGroup != -1 || cfg.affinity != nil {
		t.Errorf("defaults: %+v", cfg)
	}
}

func TestSettingsErrors(t *testing.T) {
	for _, c := range []struct {
		raw  map[string]any
		want string
	}{
		{map[string]any{"namespace": "Not_A_Namespace"}, `"namespace"`},
		{map[string]any{"pull_policy": "sometimes"}, `"pull_policy"`},
		{map[string]any{"cpu_limit": "lots"}, `"cpu_limit"`},
		{map[string]any{"service_cpu_request": "-1"}, `"service_cpu_request"`},
		{map[string]any{"memory_request": "2g", "memory_limit": "1g"}, `"memory_request"`},
		{map[string]any{"ephemeral_storage_request": "2g", "ephemeral_storage_limit": "1g"}, `"ephemeral_storage_request"`},
		{map[string]any{"service_ephemeral_storage_limit": "-1"}, `"service_ephemeral_storage_limit"`},
		{map[string]any{"ephemeral_storage_limit": "a lot"}, `ephemeral_storage_limit`},
		{map[string]any{"tolerations": map[string]any{"dedicated=ci": "Sometimes"}}, `"tolerations"`},
		{map[string]any{"node_selector": map[string]any{"disk": "not valid!"}}, `"node_selector"`},
		{map[string]any{"pod_labels": map[string]any{"bad key!": "x"}}, `"pod_labels"`},
		{map[string]any{"poll_timeout": "0s"}, `"poll_timeout"`},
		{map[string]any{"cleanup_grace_period": "-1s"}, `"cleanup_grace_period"`},
		{map[string]any{"builds_dir": "relative"}, `"builds_dir"`},
		{map[string]any{"no_such_setting": "x"}, "no_such_setting"},
		{map[string]any{"privileged": "perhaps"}, "privileged"},
	} {
		_, err := decodeSettings(c.raw)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("decodeSettings(%v) = %v; want an error naming %s", c.raw, err, c.want)
		}
	}
}

func TestSettingsParsed(t *testing.T) {
	cfg, err := decodeSettings(map[string]any{
		"cpu_request": "250m", "cpu_limit": "1.5", "memory_request": "128m", "memory_limit": "1g",
		"service_memory_limit": "256m", "ephemeral_storage_limit": "10g", "service_ephemeral_storage_request": "1g",
		"tolerations": map[string]any{"dedicated=ci": "NoSchedule", "spot": ""},
	})
	if err != nil {
		t.Fatal(err)
	}
	if q := cfg.build.Limits[corev1.ResourceCPU]; q.Cmp(resource.MustParse("1500m")) != 0 {
		t.Errorf("cpu limit %s", q.String())
	}
	if q := cfg.build.Limits[corev1.ResourceMemory]; q.Value() != 1<<30 {
		t.Errorf("memory limit %s", q.String())
	}
	if q := cfg.service.Limits[corev1.ResourceMemory]; q.Value() != 256<<20 {
		t.Errorf("service memory limit %s", q.String())
	}
	if q := cfg.build.Limits[corev1.ResourceEphemeralStorage]; q.Value() != 10<<30 {
		t.Errorf("ephemeral storage limit %s", q.String())
	}
	if q := cfg.service.Requests[corev1.ResourceEphemeralStorage]; q.Value() != 1<<30 {
		t.Errorf("service ephemeral storage request %s", q.String())
	}
	want := []corev1.Toleration{
		{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "ci", Effect: corev1.TaintEffectNoSchedule},
		{Key: "spot", Operator: corev1.TolerationOpExists},
	}
	if len(cfg.tolerations) != 2 || cfg.tolerations[0] != want[0] || cfg.tolerations[1] != want[1] {
		t.Errorf("tolerations %+v; want %+v", cfg.tolerations, want)
	}
}

func TestSchema(t *testing.T) {
	info, err := New().Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range info.Config {
		names[f.Name] = true
	}
	for _, n := range []string{"host", "kubeconfig", "context", "namespace", "image", "pull_policy", "image_pull_secrets",
		"service_account", "cpu_request", "cpu_limit", "memory_request", "memory_limit", "service_cpu_request",
		"service_cpu_limit", "service_memory_request", "service_memory_limit", "node_selector", "tolerations",
		"pod_labels", "pod_annotations", "privileged", "poll_timeout", "cleanup_grace_period", "affinity", "run_as_user", "run_as_group",
		"ephemeral_storage_request", "ephemeral_storage_limit", "service_ephemeral_storage_request", "service_ephemeral_storage_limit"} {
		if !names[n] {
			t.Errorf("setting %q missing from the schema", n)
		}
	}
}

func TestPodSpec(t *testing.T) {
	cfg, err := decodeSettings(map[string]any{
		"namespace": "ci", "runner_name": "runner one", "memory_limit": "512m", "privileged": true,
		"node_selector": map[string]any{"pool": "ci"}, "pod_labels": map[string]any{"team": "build"},
		"pod_annotations": map[string]any{"note": "x"}, "image_pull_secrets": []string{"regcred"},
		"service_account": "builder", "cleanup_grace_period": "5s",
	})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_800_000_000, 0)
	job := sdk.Job{
		ID:      "Job #42/attempt 1",
		Image:   sdk.Image{Name: "alpine:3", PullPolicy: []string{PullNever}},
		Timeout: time.Hour,
		Labels:  map[string]string{"berth.pipeline": "7", "bad key!": "x"},
		Services: []sdk.Service{
			{Image: sdk.Image{Name: "registry.example.com/group/postgres:15"}, Variables: map[string]string{"POSTGRES_PASSWORD": "service-only"}},
			{Image: sdk.Image{Name: "redis:7", Entrypoint: []string{"redis-server"}}, Aliases: []string{"cache", "Bad_Alias"}, Command: []string{"--port", "6380"}},
		},
		ExecutorVariables: map[string]string{"SECRET": "executor-only-value"},
	}
	pod, err := podSpec(cfg, job, now)
	if err != nil {
		t.Fatal(err)
	}
	if msgs := validation.IsDNS1123Label(pod.Name); len(msgs) > 0 {
		t.Errorf("pod name %q: %v", pod.Name, msgs)
	}
	if p2, _ := podSpec(cfg, sdk.Job{ID: "Job #42/attempt 2", Image: job.Image}, now); p2.Name == pod.Name {
		t.Errorf("two job IDs share pod name %q", pod.Name)
	}
	if pod.Namespace != "ci" || pod.Labels[LabelJob] == "" || pod.Labels[LabelRunner] == "" || pod.Labels["team"] != "build" || pod.Labels["berth.pipeline"] != "7" {
		t.Errorf("labels %v", pod.Labels)
	}
	for k, v := range pod.Labels {
		if len(validation.IsQualifiedName(k)) > 0 || len(validation.IsValidLabelValue(v)) > 0 {
			t.Errorf("invalid label %q=%q", k, v)
		}
	}
	if pod.Annotations[AnnotationJob] != job.ID || pod.Annotations[AnnotationExpires] != "1800007200" || pod.Annotations["note"] != "x" {
		t.Errorf("annotations %v", pod.Annotations)
	}
	s := pod.Spec
	if s.RestartPolicy != corev1.RestartPolicyNever || *s.TerminationGracePeriodSeconds != 5 || s.ServiceAccountName != "builder" ||
		s.NodeSelector["pool"] != "ci" || len(s.ImagePullSecrets) != 1 || s.ImagePullSecrets[0].Name != "regcred" {
		t.Errorf("pod spec %+v", s)
	}
	if len(s.Containers) != 3 {
		t.Fatalf("%d containers; want build and two services", len(s.Containers))
	}
	b := s.Containers[0]
	if b.Name != buildContainer || b.Image != "alpine:3" || b.ImagePullPolicy != corev1.PullNever || b.SecurityContext == nil || !*b.SecurityContext.Privileged {
		t.Errorf("build container %+v", b)
	}
	if q := b.Resources.Limits[corev1.ResourceMemory]; q.Value() != 512<<20 {
		t.Errorf("build memory limit %s", q.String())
	}
	// The step wrapper only: the job's variables travel in its scripts.
	if len(b.Env) != 1 || b.Env[0].Name != stepwrap.Env || b.Env[0].Value != escapeEnv(stepwrap.Script()) {
		t.Errorf("the build container's environment: %d variables; want the step wrapper alone", len(b.Env))
	}
	if pg := s.Containers[1]; pg.ImagePullPolicy != corev1.PullIfNotPresent || len(pg.Env) != 1 || pg.Env[0].Value != "service-only" {
		t.Errorf("service container %+v", pg)
	}
	if r := s.Containers[2]; len(r.Command) != 1 || r.Command[0] != "redis-server" || len(r.Args) != 2 {
		t.Errorf("service command %v args %v", r.Command, r.Args)
	}
	if len(s.HostAliases) != 1 || s.HostAliases[0].IP != "127.0.0.1" || strings.Join(s.HostAliases[0].Hostnames, ",") != "registry.example.com-group-postgres,cache" {
		t.Errorf("host aliases %+v", s.HostAliases)
	}
	var vols []string
	for _, v := range s.Volumes {
		vols = append(vols, v.Name)
		if v.EmptyDir == nil {
			t.Errorf("volume %s is not an emptyDir", v.Name)
		}
	}
	if strings.Join(vols, ",") != "builds,berth" {
		t.Errorf("volumes %v", vols)
	}
	if text := pod.String(); strings.Contains(text, "executor-only-value") {
		t.Errorf("an executor variable reached the pod spec: %s", text)
	}
}

func TestPodSpecNeedsImage(t *testing.T) {
	cfg, _ := decodeSettings(map[string]any{})
	if _, err := podSpec(cfg, sdk.Job{ID: "1"}, time.Now()); err == nil || !strings.Contains(err.Error(), `"image"`) {
		t.Errorf("podSpec without image: %v", err)
	}
	cfg.Image = "busybox"
	if p, err := podSpec(cfg, sdk.Job{ID: "1"}, time.Now()); err != nil || p.Spec.Containers[0].Image != "busybox" {
		t.Errorf("podSpec with the default image: %v", err)
	}
}

func TestPodStatus(t *testing.T) {
	pod := func(mod func(*corev1.Pod)) *corev1.Pod {
		p := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: buildContainer, Image: "nope:1"}}}}
		mod(p)
		return p
	}
	for _, c := range []struct {
		name  string
		pod   *corev1.Pod
		ready bool
		want  string
	}{
		{"pending", pod(func(p *corev1.Pod) {}), false, ""},
		{"running", pod(func(p *corev1.Pod) {
			p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: buildContainer, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}}
		}), true, ""},
		{"pull", pod(func(p *corev1.Pod) {
			p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: buildContainer, State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ErrImagePull", Message: "not found"}}}}
		}), false, `"nope:1"`},
		{"unschedulable", pod(func(p *corev1.Pod) {
			p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: "Unschedulable", Message: "0/1 nodes are available: 1 Insufficient memory."}}
		}), false, "Insufficient memory"},
		{"evicted", pod(func(p *corev1.Pod) {
			p.Status.Phase, p.Status.Reason, p.Status.Message = corev1.PodFailed, "Evicted", "The node was low on resource: memory."
		}), false, "evicted"},
		{"oom", pod(func(p *corev1.Pod) {
			p.Status.Phase = corev1.PodFailed
			p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: buildContainer, State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{Reason: "OOMKilled", ExitCode: 137}}}}
		}), false, "OOMKilled"},
	} {
		ready, err := podStatus(c.pod)
		if ready != c.ready || (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: podStatus = %v, %v; want %v and an error containing %q", c.name, ready, err, c.ready, c.want)
		}
	}
}

func TestLabelValue(t *testing.T) {
	for _, s := range []string{"", "ok-1", "UPPER", strings.Repeat("x", 100), "a/b c", "---"} {
		v := labelValue(s, 63)
		if msgs := validation.IsDNS1123Label(v); len(msgs) > 0 || len(v) > 63 {
			t.Errorf("labelValue(%q) = %q: %v", s, v, msgs)
		}
	}
	if labelValue("a/b", 63) == labelValue("a_b", 63) {
		t.Error("two IDs share a label value")
	}
}

func TestUploadRefusesEscapes(t *testing.T) {
	for _, entries := range [][]string{{"../x"}, {"/abs"}, {"link@/etc", "link/passwd"}} {
		var buf strings.Builder
		if err := copyChecked(&buf, strings.NewReader(tarOf(t, entries))); err == nil {
			t.Errorf("entries %v were let through", entries)
		}
	}
	var buf strings.Builder
	if err := copyChecked(&buf, strings.NewReader(tarOf(t, []string{"dir/", "dir/file", "link@dir"}))); err != nil {
		t.Errorf("a harmless archive was refused: %v", err)
	}
}

func TestUploadRefusalIsMarked(t *testing.T) {
	var buf strings.Builder
	err := copyChecked(&buf, strings.NewReader(tarOf(t, []string{"../x"})))
	if !errors.Is(err, errUnsafeEntry) || !strings.Contains(err.Error(), `"../x" refused: it leads outside the directory`) {
		t.Errorf("copyChecked: %v", err)
	}
}

func TestConfigureWithoutCluster(t *testing.T) {
	env := map[string]string{"HOME": t.TempDir()}
	e := New(WithEnv(func(k string) string { return env[k] }))
	if err := e.Configure(t.Context(), map[string]any{}); err != nil {
		t.Fatalf("Configure without any kubeconfig: %v; want the error deferred to Prepare", err)
	}
	_, err := e.Prepare(t.Context(), sdk.Job{ID: "1", Image: sdk.Image{Name: "busybox"}})
	if err == nil || !strings.Contains(err.Error(), "kubeconfig") {
		t.Errorf("Prepare without a cluster: %v; want an error naming the kubeconfig setting", err)
	}
	err = e.Configure(t.Context(), map[string]any{"kubeconfig": "/nonexistent/kubeconfig"})
	if err == nil || !strings.Contains(err.Error(), `"kubeconfig"`) {
		t.Errorf("Configure with a missing kubeconfig file: %v", err)
	}
}

func TestSettingsAffinity(t *testing.T) {
	const nodeJSON = `{"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"pool","operator":"In","values":["ci"]}]}]}}}`
	const antiYAML = `podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
  - weight: 100
    podAffinityTerm:
      topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          berth.ci/runner: one
`
	nodeKey := func(a *corev1.Affinity) string {
		return a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms[0].MatchExpressions[0].Key
	}
	for _, c := range []struct {
		name, text string
		check      func(*corev1.Affinity) bool // nil: no affinity
		wantErr    []string                    // all in the error; nil: no error
	}{
		{name: "empty", text: ""},
		{name: "blank", text: " \n"},
		{name: "empty object", text: "{}"},
		{name: "JSON", text: nodeJSON, check: func(a *corev1.Affinity) bool { return nodeKey(a) == "pool" && a.PodAffinity == nil }},
		{name: "JSON with tabs", text: "{\n\t\"podAffinity\": {\n\t\t\"requiredDuringSchedulingIgnoredDuringExecution\": [{\"topologyKey\": \"zone\"}]\n\t}\n}",
			check: func(a *corev1.Affinity) bool {
				return len(a.PodAffinity.RequiredDuringSchedulingIgnoredDuringExecution) == 1 && a.PodAffinity.RequiredDuringSchedulingIgnoredDuringExecution[0].TopologyKey == "zone"
			}},
		{name: "YAML", text: antiYAML, check: func(a *corev1.Affinity) bool {
			p := a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution
			return len(p) == 1 && p[0].Weight == 100 && p[0].PodAffinityTerm.LabelSelector.MatchLabels["berth.ci/runner"] == "one"
		}},
		{name: "bad JSON", text: `{"nodeAffinity": `, wantErr: []string{`"affinity"`, "neither valid JSON", "YAML"}},
		{name: "bad YAML", text: "nodeAffinity:\n\t- x: [", wantErr: []string{`"affinity"`, "YAML"}},
		{name: "unknown field", text: strings.Replace(nodeJSON, "matchExpressions", "matchExpression", 1),
			wantErr: []string{`"affinity"`, `unknown field "nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpression"`}},
		{name: "unknown field in YAML", text: "nodeAffinity:\n  preferred: []\n", wantErr: []string{`"affinity"`, `unknown field "nodeAffinity.preferred"`}},
		{name: "field in Go's spelling", text: `{"NodeAffinity":{}}`, wantErr: []string{`"affinity"`, `"NodeAffinity"`}},
		{name: "repeated field", text: `{"podAffinity":{},"podAffinity":{}}`, wantErr: []string{`"affinity"`, `duplicate field "podAffinity"`}},
		{name: "repeated YAML key", text: "podAffinity: {}\npodAffinity: {}\n", wantErr: []string{`"affinity"`, "podAffinity"}},
		{name: "wrong type", text: `{"nodeAffinity":"pool=ci"}`, wantErr: []string{`"affinity"`, "nodeAffinity"}},
		{name: "not an object", text: `["nodeAffinity"]`, wantErr: []string{`"affinity"`, "not a Kubernetes Affinity"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := decodeSettings(map[string]any{"affinity": c.text})
			if c.wantErr != nil {
				if err == nil {
					t.Fatalf("decodeSettings = nil; want an error containing %q", c.wantErr)
				}
				for _, w := range c.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("decodeSettings: %v; want it to contain %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (cfg.affinity == nil) != (c.check == nil) || (c.check != nil && !c.check(cfg.affinity)) {
				t.Errorf("affinity %+v", cfg.affinity)
			}
		})
	}
}

// TestAffinityHelpExample checks that the example the help text gives
// is one the setting accepts.
func TestAffinityHelpExample(t *testing.T) {
	info, err := New().Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range info.Config {
		if f.Name != "affinity" {
			continue
		}
		for _, w := range []string{"JSON or YAML", "nodeAffinity", "podAffinity", "podAntiAffinity"} {
			if !strings.Contains(f.Description, w) {
				t.Errorf("the help of \"affinity\" does not say %q: %s", w, f.Description)
			}
		}
		_, example, ok := strings.Cut(f.Description, "e.g. ")
		example, _, _ = strings.Cut(example, "; ")
		if !ok || strings.Contains(example, "\n") {
			t.Fatalf("no one-line example in the help of \"affinity\": %s", f.Description)
		}
		if a, err := parseAffinity(example); err != nil || a == nil {
			t.Errorf("the example %s: %v, %v", example, a, err)
		}
		return
	}
	t.Error("no setting \"affinity\"")
}

func TestSettingsRunAs(t *testing.T) {
	for _, c := range []struct {
		name        string
		raw         map[string]any
		user, group int64
		wantErr     string
	}{
		{name: "default", raw: map[string]any{}, user: -1, group: -1},
		{name: "both", raw: map[string]any{"run_as_user": 1234, "run_as_group": 2345}, user: 1234, group: 2345},
		{name: "root", raw: map[string]any{"run_as_user": 0, "run_as_group": 0}, user: 0, group: 0},
		{name: "from a flag", raw: map[string]any{"run_as_user": "1000"}, user: 1000, group: -1},
		{name: "image's, said", raw: map[string]any{"run_as_user": -1, "run_as_group": int64(-1)}, user: -1, group: -1},
		{name: "largest", raw: map[string]any{"run_as_group": int64(1<<31 - 1)}, user: -1, group: 1<<31 - 1},
		{name: "negative user", raw: map[string]any{"run_as_user": -2}, wantErr: `setting "run_as_user": -2 is not an ID`},
		{name: "negative group", raw: map[string]any{"run_as_group": int64(-1000)}, wantErr: `setting "run_as_group": -1000 is not an ID`},
		{name: "too large", raw: map[string]any{"run_as_user": int64(1 << 31)}, wantErr: `setting "run_as_user": 2147483648 is above`},
		{name: "not a number", raw: map[string]any{"run_as_group": "staff"}, wantErr: `"run_as_group"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := decodeSettings(c.raw)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Errorf("decodeSettings(%v) = %v; want an error containing %q", c.raw, err, c.wantErr)
				}
				return
			}
			if err != nil || cfg.RunAsUser != c.user || cfg.RunAsGroup != c.group {
				t.Errorf("decodeSettings(%v): user %d, group %d, %v; want %d, %d", c.raw, cfg.RunAsUser, cfg.RunAsGroup, err, c.user, c.group)
			}
		})
	}
}

func TestPodSpecAffinityAndRunAs(t *testing.T) {
	ptr := func(p *int64) string {
		if p == nil {
			return "unset"
		}
		return strconv.FormatInt(*p, 10)
	}
	for _, c := range []struct {
		name            string
		raw             map[string]any
		user, group     string // "unset" or the ID
		affinityTopoKey string // "": no affinity
	}{
		{name: "defaults", raw: map[string]any{}},
		{name: "user", raw: map[string]any{"run_as_user": 1234}, user: "1234", group: "unset"},
		{name: "group", raw: map[string]any{"run_as_group": 2345}, user: "unset", group: "2345"},
		{name: "root", raw: map[string]any{"run_as_user": 0, "run_as_group": 0}, user: "0", group: "0"},
		{name: "affinity", raw: map[string]any{"affinity": "podAffinity:\n  requiredDuringSchedulingIgnoredDuringExecution:\n  - topologyKey: zone\n"}, affinityTopoKey: "zone"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := decodeSettings(c.raw)
			if err != nil {
				t.Fatal(err)
			}
			pod, err := podSpec(cfg, sdk.Job{ID: "1", Image: sdk.Image{Name: "busybox"}}, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			sc := pod.Spec.SecurityContext
			switch {
			case c.user == "" && sc != nil:
				t.Errorf("securityContext %+v; want none", sc)
			case c.user != "" && sc == nil:
				t.Errorf("no securityContext; want user %s, group %s", c.user, c.group)
			case sc != nil && (ptr(sc.RunAsUser) != c.user || ptr(sc.RunAsGroup) != c.group):
				t.Errorf("securityContext user %s, group %s; want %s, %s", ptr(sc.RunAsUser), ptr(sc.RunAsGroup), c.user, c.group)
			case sc != nil && sc.FSGroup != nil:
				t.Errorf("fsGroup %d; want none", *sc.FSGroup)
			}
			for _, ct := range pod.Spec.Containers {
				if ct.SecurityContext != nil && (ct.SecurityContext.RunAsUser != nil || ct.SecurityContext.RunAsGroup != nil) {
					t.Errorf("container %s overrides the pod's user or group: %+v", ct.Name, ct.SecurityContext)
				}
			}
			a := pod.Spec.Affinity
			switch {
			case c.affinityTopoKey == "" && a != nil:
				t.Errorf("affinity %+v; want none", a)
			case c.affinityTopoKey != "" && (a == nil || a.PodAffinity.RequiredDuringSchedulingIgnoredDuringExecution[0].TopologyKey != c.affinityTopoKey):
				t.Errorf("affinity %+v; want the setting's", a)
			case a != nil && a == cfg.affinity:
				t.Error("the pod shares the settings' affinity; want a copy")
			}
		})
	}
}

func TestPodSpecPullSecrets(t *testing.T) {
	login := sdk.Credential{Registry: "registry.example.com", Username: "u", Password: "p"}
	for _, c := range []struct {
		name       string
		configured []string
		creds      []sdk.Credential
		want       []string // "JOB": the job's pull Secret
	}{
		{name: "none", want: nil},
		{name: "configured only", configured: []string{"regcred", "other"}, want: []string{"regcred", "other"}},
		{name: "job only", creds: []sdk.Credential{login}, want: []string{"JOB"}},
		{name: "both, the job's last", configured: []string{"regcred"}, creds: []sdk.Credential{login}, want: []string{"regcred", "JOB"}},
		{name: "login without user or password", creds: []sdk.Credential{{Registry: "registry.example.com"}}, want: nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := decodeSettings(map[string]any{"image_pull_secrets": c.configured})
			if err != nil {
				t.Fatal(err)
			}
			job := sdk.Job{ID: "Job #7", Image: sdk.Image{Name: "busybox"}, Credentials: c.creds}
			pod, err := podSpec(cfg, job, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range pod.Spec.ImagePullSecrets {
				if r.Name == pullSecretName(job.ID) {
					r.Name = "JOB"
				}
				got = append(got, r.Name)
			}
			if strings.Join(got, ",") != strings.Join(c.want, ",") {
				t.Errorf("imagePullSecrets %v; want %v", got, c.want)
			}
		})
	}
}

func TestPodSpecEntrypoint(t *testing.T) {
	cfg, err := decodeSettings(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name       string
		entrypoint []string
		command    []string
		args       []string
	}{
		{"none: the keep-alive replaces the image's", nil, stepwrap.KeepAlive(), nil},
		{"cleared", []string{""}, stepwrap.KeepAlive(), nil},
		{"the job's, given the keep-alive", []string{"/init", "--"}, []string{"/init", "--"}, stepwrap.KeepAlive()},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pod, err := podSpec(cfg, sdk.Job{ID: "1", Image: sdk.Image{Name: "img", Entrypoint: tt.entrypoint}}, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			c := pod.Spec.Containers[0]
			if !slices.Equal(c.Command, tt.command) || !slices.Equal(c.Args, tt.args) {
				t.Errorf("command %q args %q; want %q %q", c.Command, c.Args, tt.command, tt.args)
			}
		})
	}
}

// fullDisk takes room bytes, then fails as a full disk does: a stand-in,
// as filling a real disk is not for a test to do to the machine it runs on.
type fullDisk struct{ room int }

func (d *fullDisk) Write(p []byte) (int, error) {
	if len(p) > d.room {
		n := d.room
		d.room = 0
		return n, syscall.ENOSPC
	}
	d.room -= len(p)
	return len(p), nil
}

// TestUploadCopyIsASpare: the local copy an upload resumes from failing
// (no room) does not fail the upload; only a resume then has nothing to
// resume from, and says why.
func TestUploadCopyIsASpare(t *testing.T) {
	var live, spool bytes.Buffer
	w := &spoolingWriter{spool: &spool, live: &live}
	chunk := bytes.Repeat([]byte("x"), 1000)
	for range 3 {
		if _, err := w.Write(chunk); err != nil {
			t.Fatalf("Write with both working: %v", err)
		}
	}
	w.detach()
	if _, err := w.Write(chunk); err != nil || live.Len() != 3000 || spool.Len() != 4000 {
		t.Fatalf("after detach: %v, live %d, copy %d bytes; want 3000 and 4000", err, live.Len(), spool.Len())
	}

	live.Reset()
	w = &spoolingWriter{spool: &fullDisk{room: 1500}, live: &live}
	for i := range 3 {
		if _, err := w.Write(chunk); err != nil {
			t.Fatalf("Write %d with the copy full: %v", i, err)
		}
	}
	if live.Len() != 3000 || !errors.Is(w.spoolError(), syscall.ENOSPC) {
		t.Errorf("with the copy full: live %d bytes, copy error %v; want 3000 and ENOSPC", live.Len(), w.spoolError())
	}
	w.detach()
	if _, err := w.Write(chunk); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("Write after detach, no copy: %v; want the copy's error", err)
	}
}
