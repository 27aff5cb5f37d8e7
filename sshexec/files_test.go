package sshexec_test

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/berthci/berth/sdk/archive"
	"github.com/berthci/berth/sshexec/sshdtest"
)

// entry is one tar entry of a test archive.
type entry struct {
	name string
	typ  byte
	mode int64
	body string // contents, or a link's target
}

func file(name, body string, mode int64) entry { return entry{name, tar.TypeReg, mode, body} }
func dir(name string, mode int64) entry        { return entry{name, tar.TypeDir, mode, ""} }
func symlink(name, target string) entry        { return entry{name, tar.TypeSymlink, 0o777, target} }
func hardlink(name, target string) entry       { return entry{name, tar.TypeLink, 0o644, target} }

func tarOf(t *testing.T, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode}
		switch e.typ {
		case tar.TypeReg:
			hdr.Size = int64(len(e.body))
		case tar.TypeSymlink, tar.TypeLink:
			hdr.Linkname = e.body
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			if _, err := io.WriteString(tw, e.body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// untar reads an archive into entries by name.
func untar(t *testing.T, data []byte) map[string]entry {
	t.Helper()
	got := map[string]entry{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return got
		}
		if err != nil {
			t.Fatalf("the downloaded archive: %v", err)
		}
		e := entry{name: hdr.Name, typ: hdr.Typeflag, mode: hdr.Mode & 0o777, body: hdr.Linkname}
		if e.typ == tar.TypeReg {
			b, _ := io.ReadAll(tr)
			e.body = string(b)
		}
		if e.typ == tar.TypeSymlink || e.typ == tar.TypeDir {
			e.mode = 0
		}
		if _, dup := got[hdr.Name]; dup {
			t.Errorf("%s is in the archive twice", hdr.Name)
		}
		got[hdr.Name] = e
	}
}

func TestUploadDownload(t *testing.T) {
	s := sshdtest.Start(t)
	c := dial(t, s.Config(t))
	root := workspace(t, c)
	ctx := t.Context()
	archive := tarOf(t,
		dir("art", 0o755),
		file("art/run.sh", "#!/bin/sh\necho hi\n", 0o755),
		file("art/secret", "s3cret", 0o600),
		symlink("art/link", "run.sh"),
		symlink("art/abs", "/no/such/target"),
		hardlink("art/hard", "art/secret"),
		dir("ro", 0o555),
		file("ro/inside", "r", 0o444),
		file("deep/er/file", "d", 0o640), // parents not in the archive
	)
	if err := c.Upload(ctx, root, "in", bytes.NewReader(archive)); err != nil {
		t.Fatalf("Upload: %v", err)
	}
	modes := map[string]fs.FileMode{
		"in/art/run.sh": 0o755, "in/art/secret": 0o600, "in/ro": fs.ModeDir | 0o555,
		"in/ro/inside": 0o444, "in/deep/er/file": 0o640, "in/art/hard": 0o600,
	}
	for name, want := range modes {
		fi, err := os.Lstat(filepath.Join(root, name))
		if err != nil || fi.Mode() != want {
			t.Errorf("%s: mode %v (%v), want %v", name, fi.Mode(), err, want)
		}
	}
	if target, err := os.Readlink(filepath.Join(root, "in/art/abs")); err != nil || target != "/no/such/target" {
		t.Errorf("in/art/abs links to %q (%v)", target, err)
	}
	a, _ := os.Stat(filepath.Join(root, "in/art/secret"))
	b, _ := os.Stat(filepath.Join(root, "in/art/hard"))
	if a == nil || b == nil || !os.SameFile(a, b) {
		t.Errorf("in/art/hard is not a hard link to in/art/secret")
	}
	if err := c.Upload(ctx, root, "", bytes.NewReader(tarOf(t, file("top", "t", 0o644)))); err != nil {
		t.Fatalf("Upload into the root: %v", err)
	}

	var buf bytes.Buffer
	if err := c.Download(ctx, root, []string{"in/art", "top", "in/art/run.sh", "no/such/path"}, &buf); err != nil {
		t.Fatalf("Download: %v", err)
	}
	got := untar(t, buf.Bytes())
	want := map[string]entry{
		"in/art/":       {"in/art/", tar.TypeDir, 0, ""},
		"in/art/run.sh": {"in/art/run.sh", tar.TypeReg, 0o755, "#!/bin/sh\necho hi\n"},
		"in/art/secret": {"in/art/secret", tar.TypeReg, 0o600, "s3cret"},
		"in/art/link":   {"in/art/link", tar.TypeSymlink, 0, "run.sh"},
		"in/art/abs":    {"in/art/abs", tar.TypeSymlink, 0, "/no/such/target"},
		"top":           {"top", tar.TypeReg, 0o644, "t"},
	}
	// One of the two names of the hard-linked file is stored as a link to
	// the other, whichever tar met first.
	hard := got["in/art/hard"]
	if hard.typ == tar.TypeLink {
		hard.mode = 0
		if hard.body != "in/art/secret" {
			t.Errorf("in/art/hard links to %q", hard.body)
		}
	} else if got["in/art/secret"].typ == tar.TypeLink {
		want["in/art/secret"] = entry{"in/art/secret", tar.TypeLink, got["in/art/secret"].mode, "in/art/hard"}
		want["in/art/hard"] = entry{"in/art/hard", tar.TypeReg, 0o600, "s3cret"}
	}
	delete(got, "in/art/hard")
	delete(want, "in/art/hard")
	for name, w := range want {
		if g, ok := got[name]; !ok || g != w {
			t.Errorf("downloaded %s: %+v (present %v), want %+v", name, g, ok, w)
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("downloaded %s, which was not asked for", name)
		}
	}

	buf.Reset()
	if err := c.Download(ctx, root, []string{"nothing/here"}, &buf); err != nil {
		t.Fatalf("Download of a missing path: %v", err)
	}
	if got := untar(t, buf.Bytes()); len(got) != 0 {
		t.Errorf("Download of a missing path gave %v, want an empty archive", got)
	}
}

func TestUploadRefuses(t *testing.T) {
	s := sshdtest.Start(t)
	c := dial(t, s.Config(t))
	ctx := t.Context()
	tests := []struct {
		name    string
		dir     string
		entries []entry
		wantErr string
	}{
		{"dot-dot", "", []entry{file("../evil", "x", 0o644)}, `"../evil"`},
		{"dot-dot inside", "", []entry{file("a/../../evil", "x", 0o644)}, `"a/../../evil"`},
		{"absolute", "", []entry{file("/tmp/evil", "x", 0o644)}, `"/tmp/evil"`},
		{"through its own symlink", "", []entry{symlink("l", ".."), file("l/evil", "x", 0o644)}, `"l/evil"`},
		{"dir through its own symlink", "", []entry{symlink("l", "/"), dir("l/evil", 0o755)}, `"l/evil"`},
		{"directory over its own symlink", "", []entry{symlink("l", ".."), dir("l", 0o755)}, `"l"`},
		{"hard link outside", "", []entry{hardlink("h", "../evil")}, `"h"`},
		{"hard link to a directory", "", []entry{dir("d", 0o755), hardlink("h", "d")}, `"h"`},
		{"hard link through a symlink", "", []entry{file("f", "x", 0o644), symlink("l", "."), hardlink("h", "l/f")}, `"h"`},
		{"fifo", "", []entry{{"fifo", tar.TypeFifo, 0o644, ""}}, `"fifo"`},
		{"target outside", "../escaped", []entry{file("f", "x", 0o644)}, `"../escaped"`},
		{"target absolute", "/tmp", []entry{file("f", "x", 0o644)}, `"/tmp"`},
		{"target through a symlink", "made/link/sub", []entry{file("f", "x", 0o644)}, "made/link is a symbolic link"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The build directory is root, alone in parent; made/link in
			// it leads to outside, an empty directory.
			parent, err := c.MakeWorkspace(ctx, "refused/"+archive.JobDirName(tt.name))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = c.RemoveWorkspace(context.Background(), parent) })
			root, outside := parent+"/build", parent+"/outside"
			if _, err := c.Output(ctx, `mkdir -p "$1/made" "$2" && ln -s "$2" "$1/made/link"`, root, outside); err != nil {
				t.Fatal(err)
			}
			err = c.Upload(ctx, root, tt.dir, bytes.NewReader(tarOf(t, tt.entries...)))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Upload: %v; want an error naming %s", err, tt.wantErr)
			}
			for d, want := range map[string][]string{parent: {"build", "outside"}, outside: nil} {
				names, _ := os.ReadDir(d)
				var got []string
				for _, n := range names {
					got = append(got, n.Name())
				}
				if !slices.Equal(got, want) {
					t.Errorf("%s holds %v after the refused upload, want %v", d, got, want)
				}
			}
			if _, err := os.Lstat("/tmp/evil"); err == nil {
				t.Errorf("/tmp/evil exists")
			}
		})
	}
}

func TestDownloadRefuses(t *testing.T) {
	s := sshdtest.Start(t)
	c := dial(t, s.Config(t))
	root := workspace(t, c)
	if err := os.Symlink(t.TempDir(), filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ path, wantErr string }{
		{"../x", `"../x"`},
		{"/etc/passwd", `"/etc/passwd"`},
		{"link/x", "link is a symbolic link"},
	} {
		t.Run(tt.path, func(t *testing.T) {
			err := c.Download(t.Context(), root, []string{tt.path}, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Download of %s: %v; want an error naming %s", tt.path, err, tt.wantErr)
			}
		})
	}
	// The link itself is stored as a link.
	var buf bytes.Buffer
	if err := c.Download(t.Context(), root, []string{"link"}, &buf); err != nil {
		t.Fatal(err)
	}
	if got := untar(t, buf.Bytes()); got["link"].typ != tar.TypeSymlink {
		t.Errorf("link came down as %+v, want a symbolic link", got["link"])
	}
}
