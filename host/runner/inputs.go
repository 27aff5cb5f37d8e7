package runner

import (
	"archive/tar"
	"archive/zip"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/berthci/berth/host/artifacts"
	"github.com/berthci/berth/host/cache"
	"github.com/berthci/berth/host/gitlab"
	"github.com/berthci/berth/host/job"
	"github.com/berthci/berth/host/sources"
)

// SourceFetcher gets a job's repository on the host; *sources.Fetcher is
// one.
type SourceFetcher interface {
	Checkout(ctx context.Context, req sources.Request, log io.Writer) (*sources.Tree, error)
}

func randomSuffix() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func emptyTar(w io.Writer) error { return tar.NewWriter(w).Close() }

func (b *build) workDir() string {
	if b.s.opts.WorkDir != "" {
		_ = os.MkdirAll(b.s.opts.WorkDir, 0o700)
		return b.s.opts.WorkDir
	}
	return os.TempDir()
}

// tempFile makes a file removed when the job ends.
func (b *build) tempFile(pattern string) (*os.File, error) {
	f, err := os.CreateTemp(b.workDir(), pattern)
	if err != nil {
		return nil, err
	}
	b.cleanups = append(b.cleanups, func() {
		f.Close()
		os.Remove(f.Name())
	})
	return f, nil
}

// sourceInput is the sources' input and, once fetched, their work tree.
type sourceInput struct {
	input job.Input
	tree  *sources.Tree
}

// sources is the input that fetches the repository and ships its work
// tree, or nil when berth fetches no sources.
func (b *build) sources(slot int) *sourceInput {
	if b.s.opts.Sources == nil {
		return nil
	}
	j := b.j
	strategy, _ := b.lookup("GIT_STRATEGY")
	strategy = strings.ToLower(b.expand(strategy))
	if strategy == "" {
		strategy = sources.Clone
		if j.AllowGitFetch {
			strategy = sources.Fetch
		}
	}
	if strategy == sources.Fetch && !j.AllowGitFetch {
		strategy = sources.Clone
	}
	depth := j.GitInfo.Depth
	if v, ok := b.lookup("GIT_DEPTH"); ok && strings.TrimSpace(v) != "" {
		if n, err := strconv.Atoi(strings.TrimSpace(b.expand(v))); err == nil && n >= 0 {
			depth = n
		}
	}
	submodules, _ := b.lookup("GIT_SUBMODULE_STRATEGY")
	clean, hasClean := b.lookup("GIT_CLEAN_FLAGS")
	if !hasClean {
		clean = ""
	}
	checkout, _ := b.lookup("GIT_CHECKOUT")
	project := j.JobInfo.ProjectFullPath
	if project == "" {
		project = strconv.FormatInt(j.JobInfo.ProjectID, 10)
	}
	req := sources.Request{
		RepoURL: j.GitInfo.RepoURL, Project: b.rc.key() + "/" + project, Slot: slot,
		SHA: j.GitInfo.Sha, Ref: j.GitInfo.Ref, RefType: j.GitInfo.RefType, Refspecs: j.GitInfo.Refspecs,
		Depth: depth, Strategy: strategy, Submodules: strings.ToLower(b.expand(submodules)),
		CleanFlags: b.expand(clean), NoCheckout: strings.EqualFold(checkout, "false"), ObjectFormat: j.GitInfo.RepoObjectFormat,
	}
	si := &sourceInput{}
	si.input = job.Input{
		Name: "sources",
		Prepare: func(ctx context.Context, log io.Writer) error {
			t, err := b.s.opts.Sources.Checkout(ctx, req, log)
			if err != nil {
				return fmt.Errorf("getting the sources: %w", err)
			}
			si.tree = t
			b.cleanups = append(b.cleanups, t.Release)
			return nil
		},
		Write: func(ctx context.Context, w io.Writer) error {
			if si.tree == nil {
				return emptyTar(w)
			}
			err := si.tree.Write(ctx, w)
			si.tree.Release()
			return err
		},
	}
	return si
}

func outputWhen(when string) job.OutputWhen {
	switch when {
	case "on_failure":
		return job.OnFailure
	case "always":
		return job.Always
	default:
		return job.OnSuccess
	}
}

// projectDir names a project's folder under cache_dir.
func (b *build) projectDir() string {
	p := b.j.JobInfo.ProjectFullPath
	if p == "" {
		return "project-" + strconv.FormatInt(b.j.JobInfo.ProjectID, 10)
	}
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' || r == '/' {
			return r
		}
		return '_'
	}, strings.Trim(strings.ReplaceAll(p, "..", "_"), "/"))
}

// cacheIO returns the restore input and the save output of one cache.
func (b *build) cacheIO(c gitlab.Cache, tracked func() map[string]bool) (*job.Input, *job.Output) {
	if b.rc.CacheDir == "" {
		return nil, nil
	}
	key := strings.TrimSpace(b.expand(c.Key))
	if key == "" {
		key = "default"
	}
	var fallbacks []string
	for _, k := range c.FallbackKeys {
		if k = strings.TrimSpace(b.expand(k)); k != "" {
			fallbacks = append(fallbacks, k)
		}
	}
	if v, ok := b.lookup("CACHE_FALLBACK_KEY"); ok && strings.TrimSpace(b.expand(v)) != "" {
		fallbacks = append(fallbacks, strings.TrimSpace(b.expand(v)))
	}
	store := cache.Store{Dir: filepath.Join(b.rc.CacheDir, b.projectDir())}
	policy := c.Policy
	if policy == "" {
		policy = "pull-push"
	}
	sel := artifacts.Selection{Paths: c.Paths, Untracked: c.Untracked}
	var in *job.Input
	var out *job.Output
	if policy == "pull" || policy == "pull-push" {
		var rc io.ReadCloser
		in = &job.Input{
			Name: "cache",
			Prepare: func(ctx context.Context, log io.Writer) error {
				fmt.Fprintf(log, "Checking cache for %s...\n", key)
				r, found, err := store.Open(append([]string{key}, fallbacks...)...)
				if errors.Is(err, cache.ErrMiss) {
					fmt.Fprintf(log, "WARNING: no cache for %s; the job starts without it\n", key)
					return nil
				}
				if err != nil {
					// A broken cache never fails a job.
					fmt.Fprintf(log, "WARNING: %v; the job starts without a cache\n", err)
					return nil
				}
				rc = r
				b.cleanups = append(b.cleanups, func() { r.Close() })
				fmt.Fprintf(log, "Restoring cache of key %s\n", found)
				return nil
			},
			Write: func(ctx context.Context, w io.Writer) error {
				if rc == nil {
					return emptyTar(w)
				}
				_, err := io.Copy(w, rc)
				return err
			},
		}
	}
	if (policy == "push" || policy == "pull-push") && !sel.Empty() {
		out = &job.Output{
			Name: "cache", Paths: sel.Roots(), When: outputWhen(c.When),
			Read: func(ctx context.Context, r io.Reader) error {
				sel.Tracked = tracked()
				n := 0
				err := store.Save(ctx, key, func(ctx context.Context, w io.Writer) error {
					var err error
					n, err = artifacts.FilterTar(ctx, r, w, sel)
					return err
				})
				_, _ = io.Copy(io.Discard, r)
				if err != nil {
					return err
				}
				b.note("0;33", "Saved cache %s (%d files)", key, n)
				return nil
			},
		}
	}
	return in, out
}

// dependency is the input that downloads a dependency's artifacts and
// ships them into the build directory.
func (b *build) dependency(d gitlab.Dependency) job.Input {
	var zr *zip.Reader
	return job.Input{
		Name: "artifacts of " + d.Name,
		Prepare: func(ctx context.Context, log io.Writer) error {
			fmt.Fprintf(log, "Downloading artifacts for %s (%d)...\n", d.Name, d.ID)
			f, err := b.tempFile("berth-dependency-*.zip")
			if err != nil {
				return err
			}
			n, err := b.api.DownloadArtifact(ctx, d.ID, b.j.Token, f)
			if err != nil {
				var se *gitlab.StatusError
				if errors.As(err, &se) && se.Status == http.StatusNotFound {
					b.missingDependency = true
				}
				return fmt.Errorf("downloading the artifacts of %s (job %d): %w", d.Name, d.ID, err)
			}
			zr, err = zip.NewReader(f, n)
			if err != nil {
				return fmt.Errorf("the artifacts of %s (job %d) are not a zip archive: %w", d.Name, d.ID, err)
			}
			fmt.Fprintf(log, "Downloaded %d files of %s\n", len(zr.File), d.Name)
			return nil
		},
		Write: func(ctx context.Context, w io.Writer) error {
			if zr == nil {
				return emptyTar(w)
			}
			return artifacts.ZipToTar(ctx, zr, w)
		},
	}
}

// artifact is the output that collects, archives and uploads one entry
// of the job's artifacts (the archive or a report).
func (b *build) artifact(a gitlab.Artifact, tracked func() map[string]bool) *job.Output {
	sel := artifacts.Selection{Paths: a.Paths, Exclude: a.Exclude, Untracked: a.Untracked}
	if sel.Empty() {
		return nil
	}
	format, typ := a.Format, a.Type
	if format == "" {
		format = "zip"
	}
	if typ == "" {
		typ = "archive"
	}
	name := b.expand(a.Name)
	if name == "" {
		name = "artifacts"
	}
	file := name
	switch format {
	case "zip":
		if !strings.HasSuffix(file, ".zip") {
			file += ".zip"
		}
	case "gzip":
		if !strings.HasSuffix(file, ".gz") {
			file += ".gz"
		}
	}
	label := "artifacts"
	if typ != "archive" {
		label = typ + " report"
	}
	return &job.Output{
		Name: label, Paths: sel.Roots(), When: outputWhen(a.When),
		Read: func(ctx context.Context, r io.Reader) error {
			sel.Tracked = tracked()
			f, err := b.tempFile("berth-artifact-*")
			if err != nil {
				return err
			}
			var n int
			switch format {
			case "zip":
				n, err = artifacts.TarToZip(ctx, r, f, sel)
			case "gzip":
				n, err = artifacts.TarToGzip(ctx, r, f, sel)
			case "raw":
				n, err = artifacts.TarToRaw(ctx, r, f, sel)
			default:
				err = fmt.Errorf("artifact_format %q is not one berth writes (zip, gzip, raw)", format)
			}
			_, _ = io.Copy(io.Discard, r)
			if err != nil {
				return fmt.Errorf("archiving %s: %w", label, err)
			}
			if n == 0 {
				b.note("0;33", "WARNING: %s: no files match %s; nothing uploaded", label, strings.Join(a.Paths, ", "))
				return nil
			}
			b.note("0;33", "Uploading %s (%s, %d files)...", label, file, n)
			open := func() (io.ReadCloser, error) { return os.Open(f.Name()) }
			up := gitlab.ArtifactUpload{FileName: file, Type: typ, Format: format, ExpireIn: a.ExpireIn}
			if err := b.api.UploadArtifact(ctx, b.j.ID, b.j.Token, up, open); err != nil {
				return err
			}
			b.note("32;1", "Uploaded %s", file)
			return nil
		},
	}
}
