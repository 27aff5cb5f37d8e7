package kubernetes

import (
	"context"
	"fmt"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// forbiddenWait is how long a create the API server forbids is tried
// again. The API server's authorizer learns of a new Role or RoleBinding
// a moment after it is made (measured: about a second), so berth's first
// job right after an installation may be refused although the binding
// exists.
const forbiddenWait = 10 * time.Second

// rbacHint ends the message of a create that stayed forbidden.
const rbacHint = "berth's service account needs the Role in deploy/kubernetes/10-rbac.yaml, bound in the job namespace"

// whileForbidden runs create, again while the authorizer forbids it, for
// up to forbiddenWait; a create still forbidden then gets rbacHint. Other
// refusals with the same status (a ResourceQuota, Pod Security admission)
// are returned at once.
func whileForbidden(ctx context.Context, create func() error) error {
	deadline := time.Now().Add(forbiddenWait)
	pause := 250 * time.Millisecond
	for {
		err := create()
		// The authorizer's words: User "…" cannot create resource "pods"
		// in API group "" in the namespace "…".
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "cannot create resource") {
			return err
		}
		if time.Now().Add(pause).After(deadline) {
			return fmt.Errorf("%w (still forbidden after %s: %s)", err, forbiddenWait, rbacHint)
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(pause):
		}
		pause = min(2*pause, 2*time.Second)
	}
}
