package gitlab

import (
	"context"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// ArtifactUpload describes one archive to upload.
type ArtifactUpload struct {
	// FileName of the multipart part: "artifacts.zip", "junit.xml.gz".
	FileName string
	// Type is the artifact_type: "archive", "junit", …
	Type string
	// Format is the artifact_format: "zip", "gzip", "raw".
	Format string
	// ExpireIn as the job says it ("7d", "never"); "" lets GitLab decide.
	ExpireIn string
}

// UploadArtifact uploads an archive of job id (POST /jobs/:id/artifacts,
// multipart, streamed). open is called for each attempt and must give the
// archive from its start. A 307 is followed once to its Location.
func (c *Client) UploadArtifact(ctx context.Context, id int64, token string, a ArtifactUpload, open func() (io.ReadCloser, error)) error {
	q := url.Values{}
	if a.Format != "" {
		q.Set("artifact_format", a.Format)
	}
	if a.Type != "" {
		q.Set("artifact_type", a.Type)
	}
	if a.ExpireIn != "" {
		q.Set("expire_in", a.ExpireIn)
	}
	path := "jobs/" + strconv.FormatInt(id, 10) + "/artifacts"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	for hop := 0; ; hop++ {
		boundary := multipart.NewWriter(io.Discard).Boundary()
		cl := call{method: http.MethodPost, path: path, endpoint: "jobs/:id/artifacts", header: jobHeader(token),
			contentType: "multipart/form-data; boundary=" + boundary, timeout: 24 * time.Hour,
			body: func() (io.Reader, error) {
				f, err := open()
				if err != nil {
					return nil, err
				}
				pr, pw := io.Pipe()
				go func() {
					defer f.Close()
					mw := multipart.NewWriter(pw)
					if err := mw.SetBoundary(boundary); err != nil {
						pw.CloseWithError(err)
						return
					}
					part, err := mw.CreateFormFile("file", a.FileName)
					if err == nil {
						_, err = io.Copy(part, f)
					}
					if err == nil {
						err = mw.Close()
					}
					pw.CloseWithError(err)
				}()
				return pr, nil
			}}
		resp, cancel, err := c.do(ctx, cl)
		if err != nil {
			return fmt.Errorf("uploading %s: %w", a.FileName, err)
		}
		status := resp.StatusCode
		loc := resp.Header.Get("Location")
		var se *StatusError
		if status != http.StatusCreated && status != http.StatusOK && status != http.StatusTemporaryRedirect {
			se = statusError(cl, resp)
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		cancel()
		switch {
		case status == http.StatusCreated || status == http.StatusOK:
			return nil
		case status == http.StatusTemporaryRedirect && hop == 0 && loc != "":
			u, err := url.Parse(loc)
			if err != nil {
				return fmt.Errorf("uploading %s: GitLab redirected to %q: %w", a.FileName, loc, err)
			}
			path = resolveLocation(c.api+path, u)
			continue
		case status == http.StatusRequestEntityTooLarge:
			return fmt.Errorf("uploading %s: %w (the archive is larger than GitLab allows)", a.FileName, se)
		case status == http.StatusForbidden:
			return fmt.Errorf("uploading %s: %w (the job is no longer running, or its token is not valid)", a.FileName, se)
		case se != nil:
			return fmt.Errorf("uploading %s: %w", a.FileName, se)
		default:
			return fmt.Errorf("uploading %s: GitLab answered %d to POST /api/v4/%s", a.FileName, status, path)
		}
	}
}

func resolveLocation(from string, loc *url.URL) string {
	base, err := url.Parse(from)
	if err != nil {
		return loc.String()
	}
	return base.ResolveReference(loc).String()
}

// DownloadArtifact writes the archive of job id to w
// (GET /jobs/:id/artifacts) with the token of the job that needs it.
// Redirects (to object storage) are followed without the token. Errors for
// 401, 403 and 404 are *StatusError with that status.
func (c *Client) DownloadArtifact(ctx context.Context, id int64, token string, w io.Writer) (int64, error) {
	cl := call{method: http.MethodGet, path: "jobs/" + strconv.FormatInt(id, 10) + "/artifacts", endpoint: "jobs/:id/artifacts",
		header: jobHeader(token), timeout: 24 * time.Hour}
	resp, cancel, err := c.do(ctx, cl)
	if err != nil {
		return 0, err
	}
	defer cancel()
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, statusError(cl, resp)
	}
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return n, fmt.Errorf("%s: reading the archive: %w", cl.name(), err)
	}
	return n, nil
}
