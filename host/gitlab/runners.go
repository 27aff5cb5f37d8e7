package gitlab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// CreatedRunnerTokenPrefix starts the authentication token of a runner
// created in GitLab's UI or API; such a token is verified, not registered.
const CreatedRunnerTokenPrefix = "glrt-"

// IsCreatedRunnerToken says whether token is a glrt- authentication token.
func IsCreatedRunnerToken(token string) bool {
	return strings.HasPrefix(token, CreatedRunnerTokenPrefix)
}

// Register registers a runner with a legacy registration token
// (POST /runners) and returns its authentication token.
func (c *Client) Register(ctx context.Context, req RegisterRequest) (RunnerCredentials, error) {
	body, err := jsonBody(req)
	if err != nil {
		return RunnerCredentials{}, err
	}
	cl := call{method: http.MethodPost, path: "runners", endpoint: "runners", body: body, contentType: "application/json",
		header: http.Header{"Accept": {"application/json"}}}
	resp, cancel, err := c.do(ctx, cl)
	if err != nil {
		return RunnerCredentials{}, err
	}
	defer cancel()
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusCreated:
		var cr RunnerCredentials
		if _, err := readJSON(cl, resp, 1<<20, &cr); err != nil {
			return cr, err
		}
		if cr.Token == "" {
			return cr, fmt.Errorf("%s: GitLab's answer holds no runner token", cl.name())
		}
		return cr, nil
	case http.StatusForbidden:
		return RunnerCredentials{}, fmt.Errorf("registering the runner: %w (check the registration token)", statusError(cl, resp))
	case http.StatusGone:
		return RunnerCredentials{}, fmt.Errorf("registering the runner: %w: this GitLab no longer accepts registration tokens; create the runner in GitLab and pass its glrt- token with --token", statusError(cl, resp))
	default:
		return RunnerCredentials{}, fmt.Errorf("registering the runner: %w", statusError(cl, resp))
	}
}

// Verify checks a runner's authentication token (POST /runners/verify),
// which also makes GitLab record this runner manager (systemID).
func (c *Client) Verify(ctx context.Context, token, systemID string, info Info) (RunnerCredentials, error) {
	body, err := jsonBody(struct {
		Token    string `json:"token"`
		SystemID string `json:"system_id,omitempty"`
		Info     Info   `json:"info"`
	}{token, systemID, info})
	if err != nil {
		return RunnerCredentials{}, err
	}
	cl := call{method: http.MethodPost, path: "runners/verify", endpoint: "runners/verify", body: body, contentType: "application/json",
		header: http.Header{"Accept": {"application/json"}, "Runner-Token": {token}}}
	resp, cancel, err := c.do(ctx, cl)
	if err != nil {
		return RunnerCredentials{}, err
	}
	defer cancel()
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK, http.StatusCreated:
		var cr RunnerCredentials
		data, err := readJSON(cl, resp, 1<<20, &cr)
		if err != nil {
			// Old GitLab answered the plain text "200".
			if strings.TrimSpace(string(data)) == "200" {
				return RunnerCredentials{Token: token}, nil
			}
			return cr, err
		}
		if cr.Token == "" {
			cr.Token = token
		}
		return cr, nil
	case http.StatusForbidden:
		return RunnerCredentials{}, fmt.Errorf("verifying the runner: %w (the token is not valid: removed in GitLab, or mistyped)", statusError(cl, resp))
	default:
		return RunnerCredentials{}, fmt.Errorf("verifying the runner: %w", statusError(cl, resp))
	}
}

// Unregister deletes the runner (DELETE /runners): for runners registered
// with a registration token.
func (c *Client) Unregister(ctx context.Context, token string) error {
	return c.delete(ctx, "runners", map[string]string{"token": token}, token)
}

// UnregisterManager deletes this runner manager only
// (DELETE /runners/managers): for runners created in GitLab (glrt-),
// which stay in GitLab.
func (c *Client) UnregisterManager(ctx context.Context, token, systemID string) error {
	return c.delete(ctx, "runners/managers", map[string]string{"token": token, "system_id": systemID}, token)
}

func (c *Client) delete(ctx context.Context, path string, payload map[string]string, token string) error {
	body, err := jsonBody(payload)
	if err != nil {
		return err
	}
	cl := call{method: http.MethodDelete, path: path, endpoint: path, body: body, contentType: "application/json", header: runnerHeader(token)}
	resp, cancel, err := c.do(ctx, cl)
	if err != nil {
		return err
	}
	defer cancel()
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusOK {
		return nil
	}
	return fmt.Errorf("unregistering the runner: %w", statusError(cl, resp))
}

var systemIDPattern = regexp.MustCompile(`^[rs]_[0-9a-zA-Z]{12}$`)

// SystemIDFile is the name of the file, next to config.toml, that keeps the
// runner manager's system ID (as gitlab-runner names it).
const SystemIDFile = ".runner_system_id"

// LoadSystemID returns the system ID kept in path, making and saving a
// new one ("s_" and 12 hex digits) when there is none, so that the ID stays
// the same across restarts of this machine's runner.
func LoadSystemID(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		id := strings.TrimSpace(string(data))
		if systemIDPattern.MatchString(id) {
			return id, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("reading the runner system ID: %w", err)
	}
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	id := "s_" + hex.EncodeToString(b[:])
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", fmt.Errorf("saving the runner system ID: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("saving the runner system ID: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("saving the runner system ID: %w", err)
	}
	return id, nil
}
