package docker

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"

	"github.com/moby/moby/client"

	"github.com/berthci/berth/sdk"
)

// cleanRel cleans a slash-separated path that must stay below the build
// directory; "." is the directory itself.
func cleanRel(name string) (string, error) {
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("path %q is absolute", name)
	}
	p := path.Clean(name)
	if p == ".." || strings.HasPrefix(p, "../") {
		return "", fmt.Errorf("path %q leads outside the build directory", name)
	}
	return p, nil
}

// Upload implements sdk.Executor through the engine's archive API: the
// entries are checked (none may be absolute or climb out with ".."),
// renamed to lie below dir, and extracted in the build directory with
// their modes. With the user setting, files belong to that user. Symbolic
// links inside the container are the job's own: a path through one is
// not refused.
func (e *Executor) Upload(ctx context.Context, h sdk.Handle, dir string, r io.Reader) error {
	st, err := decodeState(h)
	if err != nil {
		return err
	}
	prefix, err := cleanRel(dir)
	if err != nil {
		return fmt.Errorf("upload to job %q: %w", h.JobID, err)
	}
	c, err := e.engine(st.Host)
	if err != nil {
		return err
	}
	pr, pw := io.Pipe()
	rewrote := make(chan error, 1)
	go func() {
		err := rewriteUpload(r, pw, prefix)
		pw.CloseWithError(err)
		rewrote <- err
	}()
	_, err = c.CopyToContainer(ctx, st.Container, client.CopyToContainerOptions{
		DestinationPath: st.BuildDir, Content: pr, CopyUIDGID: st.User != "",
	})
	pr.CloseWithError(errors.New("upload ended"))
	if rerr := <-rewrote; rerr != nil {
		return fmt.Errorf("upload to job %q: %w", h.JobID, rerr)
	}
	if err != nil {
		return e.containerError(ctx, st, fmt.Sprintf("upload to job %q", h.JobID), err)
	}
	return nil
}

// rewriteUpload copies the tar stream r to w with every entry moved below
// prefix, refusing entries that would land outside it and special files.
func rewriteUpload(r io.Reader, w io.Writer, prefix string) error {
	tr := tar.NewReader(r)
	tw := tar.NewWriter(w)
	if prefix != "." {
		// The directory itself, so that it exists even for an empty
		// archive (the engine makes missing parents of entries).
		if err := tw.WriteHeader(&tar.Header{Name: prefix + "/", Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
			return err
		}
	}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return tw.Close()
		}
		if err != nil {
			return fmt.Errorf("reading the archive: %w", err)
		}
		name, err := cleanRel(hdr.Name)
		if err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
		switch hdr.Typeflag {
		case tar.TypeReg, tar.TypeRegA, tar.TypeDir, tar.TypeSymlink:
		case tar.TypeLink:
			target, err := cleanRel(hdr.Linkname)
			if err != nil {
				return fmt.Errorf("hard link %q: %w", hdr.Name, err)
			}
			hdr.Linkname = path.Join(prefix, target)
		default:
			return fmt.Errorf("entry %q is a special file (type %q), which uploads do not carry", hdr.Name, hdr.Typeflag)
		}
		if name == "." && hdr.Typeflag != tar.TypeDir {
			return fmt.Errorf("entry %q is not a directory but names the target directory itself", hdr.Name)
		}
		hdr.Name = path.Join(prefix, name)
		if hdr.Typeflag == tar.TypeDir {
			hdr.Name += "/"
		}
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		hdr.Mode &= 0o777
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
	}
}

// Download implements sdk.Executor through the engine's archive API: each
// path (relative to the build directory) comes as the engine archives it,
// renamed to be relative to the build directory. Paths that do not exist
// are skipped; a path below another one asked for is not stored twice.
func (e *Executor) Download(ctx context.Context, h sdk.Handle, paths []string, w io.Writer) error {
	st, err := decodeState(h)
	if err != nil {
		return err
	}
	c, err := e.engine(st.Host)
	if err != nil {
		return err
	}
	var clean []string
	for _, p := range paths {
		q, err := cleanRel(p)
		if err != nil {
			return fmt.Errorf("download from job %q: %w", h.JobID, err)
		}
		clean = append(clean, q)
	}
	slices.Sort(clean)
	clean = slices.Compact(clean)
	tw := tar.NewWriter(w)
	var done []string
	for _, p := range clean {
		if slices.ContainsFunc(done, func(d string) bool { return d == "." || strings.HasPrefix(p, d+"/") }) {
			continue
		}
		done = append(done, p)
		if err := e.downloadOne(ctx, c, st, p, tw); err != nil {
			return fmt.Errorf("download from job %q: %w", h.JobID, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("download from job %q: %w", h.JobID, err)
	}
	return nil
}

// downloadOne appends the archive of one path to tw.
func (e *Executor) downloadOne(ctx context.Context, c *client.Client, st jobState, p string, tw *tar.Writer) error {
	src := path.Join(st.BuildDir, p)
	res, err := c.CopyFromContainer(ctx, st.Container, client.CopyFromContainerOptions{SourcePath: src})
	if err != nil {
		if notFound(err) {
			// "No such container" and "Could not find the file" are both
			// 404s: tell them apart.
			if _, ierr := c.ContainerInspect(ctx, st.Container, client.ContainerInspectOptions{}); ierr == nil {
				return nil
			}
		}
		return e.containerError(ctx, st, fmt.Sprintf("reading %s", p), err)
	}
	defer res.Content.Close()
	// Entries are named from the path's last element on; put them below
	// the path's parent again. For the build directory itself, drop its
	// name.
	parent := path.Dir(p)
	rename := func(n string) (string, bool) {
		n = path.Clean(n)
		if p != "." {
			return path.Join(parent, n), true
		}
		_, rest, ok := strings.Cut(n, "/")
		return rest, ok
	}
	tr := tar.NewReader(res.Content)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading the archive of %s: %w", p, err)
		}
		name, ok := rename(hdr.Name)
		if !ok {
			continue
		}
		hdr.Name = name
		if hdr.Typeflag == tar.TypeDir {
			hdr.Name += "/"
		}
		if hdr.Typeflag == tar.TypeLink {
			if hdr.Linkname, ok = rename(hdr.Linkname); !ok {
				continue
			}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("writing entry %s: %w", hdr.Name, err)
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return fmt.Errorf("writing entry %s: %w", hdr.Name, err)
		}
	}
}
