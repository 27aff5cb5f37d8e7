package kubernetes

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/berthci/berth/sdk"
)

// A job's registry logins (sdk.Job.Credentials) reach kubelet through a
// Secret of type kubernetes.io/dockerconfigjson made for the job alone:
// Prepare creates it before the pod (kubelet reads it at the first pull),
// the pod lists it in imagePullSecrets, and Cleanup, a failed Prepare and
// the expiry sweep delete it. Its ownerReference is the pod, so that
// Kubernetes' garbage collector removes it too when someone else deletes
// the pod.

// pullSecretSuffix ends the name of a job's pull Secret, which is
// otherwise its pod's.
const pullSecretSuffix = "-registry"

// dockerHubKey is the key docker login files Docker Hub's login under; a
// credential naming no registry is taken to be for Docker Hub.
const dockerHubKey = "https://index.docker.io/v1/"

// pullSecretName is the name of a job's pull Secret: the pod's name and a
// suffix, so the same for every Prepare of one job.
func pullSecretName(jobID string) string { return podName(jobID) + pullSecretSuffix }

// usable says whether a credential can log in at all.
func usable(c sdk.Credential) bool { return c.Username != "" || c.Password != "" }

// hasCredentials says whether the job needs a pull Secret.
func hasCredentials(job sdk.Job) bool { return slices.ContainsFunc(job.Credentials, usable) }

// dockerAuth is one registry's entry of a docker config file.
type dockerAuth struct {
	Username string `json:"username"`
	Password string `json:"password"`
	Auth     string `json:"auth"`
}

// dockerConfig is the content of a kubernetes.io/dockerconfigjson Secret.
type dockerConfig struct {
	Auths map[string]dockerAuth `json:"auths"`
}

// dockerConfigJSON is the .dockerconfigjson of the job's logins. The
// first login for a registry is kept: a file has one entry per registry.
func dockerConfigJSON(creds []sdk.Credential) ([]byte, error) {
	cfg := dockerConfig{Auths: map[string]dockerAuth{}}
	for _, c := range creds {
		if !usable(c) {
			continue
		}
		registry := c.Registry
		if registry == "" {
			registry = dockerHubKey
		}
		if _, seen := cfg.Auths[registry]; seen {
			continue
		}
		cfg.Auths[registry] = dockerAuth{Username: c.Username, Password: c.Password, Auth: basicAuth(c)}
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		// Not with err: it could quote what it failed on.
		return nil, errors.New("encoding the registry logins as a docker config failed")
	}
	return b, nil
}

func basicAuth(c sdk.Credential) string {
	return base64.StdEncoding.EncodeToString([]byte(c.Username + ":" + c.Password))
}

// pullSecret is the job's pull Secret (nil for a job without logins). It
// carries the pod's job and runner labels and its job and expiry
// annotations, so that Cleanup and the expiry sweep find it as they find
// the pod.
func pullSecret(pod *corev1.Pod, job sdk.Job) (*corev1.Secret, error) {
	if !hasCredentials(job) {
		return nil, nil
	}
	data, err := dockerConfigJSON(job.Credentials)
	if err != nil {
		return nil, fmt.Errorf("job %q: %w", job.ID, err)
	}
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:      pullSecretName(job.ID),
			Namespace: pod.Namespace,
			Labels: map[string]string{
				LabelJob:    pod.Labels[LabelJob],
				LabelRunner: pod.Labels[LabelRunner],
			},
			Annotations: map[string]string{
				AnnotationJob:     pod.Annotations[AnnotationJob],
				AnnotationExpires: pod.Annotations[AnnotationExpires],
			},
		},
		Type: corev1.SecretTypeDockerConfigJson,
		Data: map[string][]byte{corev1.DockerConfigJsonKey: data},
	}, nil
}

// putSecret creates the Secret. One left by an earlier Prepare of the job
// is replaced rather than updated: it may belong to a pod being deleted,
// and the garbage collector deletes by UID, which a new Secret does not
// share.
func (c *cluster) putSecret(ctx context.Context, s *corev1.Secret) error {
	secrets := c.cs.CoreV1().Secrets(s.Namespace)
	create := func() error {
		_, err := secrets.Create(ctx, s, metav1.CreateOptions{})
		return err
	}
	err := whileForbidden(ctx, create)
	if apierrors.IsAlreadyExists(err) {
		if err := c.deleteSecret(ctx, s.Namespace, s.Name); err != nil {
			return fmt.Errorf("replacing the one an earlier attempt made: %w", err)
		}
		err = whileForbidden(ctx, create)
	}
	if err != nil {
		return redact(fmt.Errorf("creating registry Secret %s/%s on %s: %w", s.Namespace, s.Name, c.describe, err), secretTexts(s)...)
	}
	return nil
}

// ownSecret makes the pod the Secret's owner, so that the garbage
// collector deletes the Secret with the pod. The merge patch replaces the
// whole list: an owner left from an earlier attempt's pod must go.
func (c *cluster) ownSecret(ctx context.Context, ns, name string, pod *corev1.Pod) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"ownerReferences": []metav1.OwnerReference{{
		APIVersion: "v1",
		Kind:       "Pod",
		Name:       pod.Name,
		UID:        pod.UID,
	}}}})
	if err != nil {
		return fmt.Errorf("encoding the owner of Secret %s/%s: %w", ns, name, err)
	}
	if _, err := c.cs.CoreV1().Secrets(ns).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("making pod %s the owner of registry Secret %s/%s on %s: %w", pod.Name, ns, name, c.describe, err)
	}
	return nil
}

// deleteSecret deletes a Secret; one already gone is fine.
func (c *cluster) deleteSecret(ctx context.Context, ns, name string) error {
	err := c.cs.CoreV1().Secrets(ns).Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting registry Secret %s/%s on %s: %w", ns, name, c.describe, err)
	}
	return nil
}

// deleteJobSecrets deletes the pull Secrets labelled with the job, for a
// Cleanup whose handle does not name them.
func (c *cluster) deleteJobSecrets(ctx context.Context, ns, jobID string) error {
	sel := labels.Set{LabelJob: labelValue(jobID, 63)}.String()
	list, err := c.cs.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return fmt.Errorf("listing the registry Secrets of job %q in namespace %s on %s: %w", jobID, ns, c.describe, err)
	}
	var errs []error
	for _, s := range list.Items {
		if s.Annotations[AnnotationJob] == jobID {
			errs = append(errs, c.deleteSecret(ctx, s.Namespace, s.Name))
		}
	}
	return errors.Join(errs...)
}

// deleteExpiredSecrets deletes the Secrets of this runner whose expiry
// annotation is past: those of jobs whose plugin died without cleaning up
// and whose pod the garbage collector could not tie them to.
func (e *Executor) deleteExpiredSecrets(ctx context.Context, c *cluster, cfg settings) error {
	sel := labels.Set{LabelRunner: labelValue(cfg.RunnerName, 63)}.String()
	list, err := c.cs.CoreV1().Secrets(cfg.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return fmt.Errorf("listing the Secrets of runner %q in namespace %s on %s: %w", cfg.RunnerName, cfg.Namespace, c.describe, err)
	}
	now := e.now().Unix()
	var errs []error
	for _, s := range list.Items {
		t, err := strconv.ParseInt(s.Annotations[AnnotationExpires], 10, 64)
		if err != nil || t >= now {
			continue
		}
		e.logger().Info("deleting the registry Secret of a job past its expiry", "secret", s.Namespace+"/"+s.Name, "job", s.Annotations[AnnotationJob])
		errs = append(errs, c.deleteSecret(ctx, s.Namespace, s.Name))
	}
	return errors.Join(errs...)
}

// secretTexts are the forms in which a Secret's logins could show up in
// an error from the API server (a webhook or a validation message may
// quote the object): each password as it is and as JSON escapes it, each
// user:password in base64, and the whole docker config in base64.
func secretTexts(s *corev1.Secret) []string {
	data := s.Data[corev1.DockerConfigJsonKey]
	texts := []string{base64.StdEncoding.EncodeToString(data)}
	var cfg dockerConfig
	if json.Unmarshal(data, &cfg) != nil {
		return texts
	}
	for _, a := range cfg.Auths {
		quoted, _ := json.Marshal(a.Password)
		texts = append(texts, a.Password, strings.Trim(string(quoted), `"`), a.Auth)
	}
	return texts
}

// redactedError is an error whose text has had secrets removed; errors.Is
// and errors.As still see the error it wraps.
type redactedError struct {
	text string
	err  error
}

func (r *redactedError) Error() string { return r.text }
func (r *redactedError) Unwrap() error { return r.err }

// redact removes each of secrets from err's text.
func redact(err error, secrets ...string) error {
	if err == nil {
		return nil
	}
	text := err.Error()
	// The longest first: a password may be part of its own escaped form.
	secrets = slices.Clone(secrets)
	slices.SortFunc(secrets, func(a, b string) int { return len(b) - len(a) })
	for _, s := range secrets {
		if s != "" {
			text = strings.ReplaceAll(text, s, "[redacted]")
		}
	}
	return &redactedError{text: text, err: err}
}
