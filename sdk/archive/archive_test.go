package archive_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/berthci/berth/sdk/archive"
)

// entry is one tar entry for a test archive.
type entry struct {
	name, link string
	typ        byte
	mode       int64
	body       string
}

func tarOf(t *testing.T, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		mode := e.mode
		if mode == 0 {
			mode = 0o644
		}
		hdr := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: mode}
		if e.typ == tar.TypeReg {
			hdr.Size = int64(len(e.body))
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

func file(name, body string, mode int64) entry {
	return entry{name: name, typ: tar.TypeReg, body: body, mode: mode}
}
func dir(name string, mode int64) entry { return entry{name: name, typ: tar.TypeDir, mode: mode} }
func symlink(name, target string) entry {
	return entry{name: name, typ: tar.TypeSymlink, link: target, mode: 0o777}
}
func hardlink(name, target string) entry { return entry{name: name, typ: tar.TypeLink, link: target} }

// sandbox returns dir (where archives go) inside a parent directory that
// holds nothing else, so an escape is visible as a new file in parent.
func sandbox(t *testing.T) (parent, dir string) {
	parent = t.TempDir()
	dir = filepath.Join(parent, "dest")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return parent, dir
}

func TestExtractRefuses(t *testing.T) {
	tests := []struct {
		name    string
		entries []entry
		wantErr string // the entry the error must name
	}{
		{"dot-dot", []entry{file("../evil", "x", 0)}, `"../evil"`},
		{"dot-dot inside", []entry{file("a/../../evil", "x", 0)}, `"a/../../evil"`},
		{"absolute", []entry{file("/tmp/evil", "x", 0)}, `"/tmp/evil"`},
		{"through absolute symlink", []entry{symlink("l", "/"), file("l/evil", "x", 0)}, `"l/evil"`},
		{"through relative symlink", []entry{symlink("l", ".."), file("l/evil", "x", 0)}, `"l/evil"`},
		{"through symlink to inside", []entry{dir("d", 0o755), symlink("l", "d"), file("l/evil", "x", 0)}, `"l/evil"`},
		{"dir through symlink", []entry{symlink("l", ".."), dir("l/evil", 0o755)}, `"l/evil"`},
		{"hard link outside", []entry{hardlink("h", "../evil")}, `"h"`},
		{"hard link through symlink", []entry{file("f", "x", 0), symlink("l", "."), hardlink("h", "l/f")}, `"h"`},
		{"hard link to a directory", []entry{dir("d", 0o755), hardlink("h", "d")}, `"h"`},
		{"fifo", []entry{{name: "fifo", typ: tar.TypeFifo}}, `"fifo"`},
		{"file over directory", []entry{dir("d", 0o755), file("d", "x", 0)}, `"d"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parent, dest := sandbox(t)
			err := archive.Extract(context.Background(), bytes.NewReader(tarOf(t, tt.entries...)), dest)
			if err == nil {
				t.Fatal("Extract succeeded, want an error")
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q does not name entry %s", err, tt.wantErr)
			}
			names, _ := os.ReadDir(parent)
			if len(names) != 1 {
				t.Errorf("something was written next to the destination: %v", names)
			}
			if _, err := os.Lstat("/evil"); err == nil {
				t.Errorf("/evil exists")
			}
		})
	}
}

func TestExtractKeeps(t *testing.T) {
	_, dest := sandbox(t)
	// A file in the way of a link and a link in the way of a file are
	// replaced, not followed.
	if err := os.WriteFile(filepath.Join(dest, "was-file"), []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(t.TempDir(), "outside")
	if err := os.WriteFile(outside, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dest, "was-link")); err != nil {
		t.Fatal(err)
	}
	data := tarOf(t,
		file("exec.sh", "#!/bin/sh\n", 0o755),
		file("secret", "s", 0o600),
		dir("ro", 0o555),
		file("ro/inside", "i", 0o444),
		file("deep/er/file", "d", 0o640), // parents not in the archive
		symlink("abs", "/etc/passwd"),
		symlink("dangling", "no/such/thing"),
		symlink("up", "../../x"),
		hardlink("hard", "secret"),
		symlink("was-file", "exec.sh"),
		file("was-link", "new", 0o644),
	)
	if err := archive.Extract(context.Background(), bytes.NewReader(data), dest); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Chmod(filepath.Join(dest, "ro"), 0o755) })

	modes := map[string]fs.FileMode{
		"exec.sh": 0o755, "secret": 0o600, "ro": fs.ModeDir | 0o555, "ro/inside": 0o444,
		"deep/er/file": 0o640, "hard": 0o600, "was-link": 0o644,
	}
	for name, want := range modes {
		fi, err := os.Lstat(filepath.Join(dest, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", name, fi.Mode(), want)
		}
	}
	links := map[string]string{"abs": "/etc/passwd", "dangling": "no/such/thing", "up": "../../x", "was-file": "exec.sh"}
	for name, want := range links {
		got, err := os.Readlink(filepath.Join(dest, name))
		if err != nil || got != want {
			t.Errorf("%s: link to %q (%v), want %q", name, got, err, want)
		}
	}
	a, _ := os.Stat(filepath.Join(dest, "secret"))
	b, _ := os.Stat(filepath.Join(dest, "hard"))
	if !os.SameFile(a, b) {
		t.Errorf("hard is not a hard link to secret")
	}
	if got, _ := os.ReadFile(outside); string(got) != "keep me" {
		t.Errorf("the file behind a replaced link was written: %q", got)
	}
	if got, _ := os.ReadFile(filepath.Join(dest, "was-link")); string(got) != "new" {
		t.Errorf("was-link holds %q, want %q", got, "new")
	}
	assertNoTempFiles(t, dest)
}

func assertNoTempFiles(t *testing.T, dir string) {
	t.Helper()
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.Contains(d.Name(), ".berth-tmp-") {
			t.Errorf("temporary file left behind: %s", p)
		}
		return nil
	})
}

// A stream that breaks in the middle of a file leaves no file under its
// name, complete or not.
func TestExtractTruncatedLeavesNoHalfFile(t *testing.T) {
	_, dest := sandbox(t)
	data := tarOf(t, file("first", "ok", 0o644), file("big", strings.Repeat("x", 100_000), 0o644))
	err := archive.Extract(context.Background(), bytes.NewReader(data[:len(data)/2]), dest)
	if err == nil {
		t.Fatal("Extract of a truncated stream succeeded")
	}
	if _, err := os.Lstat(filepath.Join(dest, "big")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("big exists after a failed extract (%v)", err)
	}
	if got, _ := os.ReadFile(filepath.Join(dest, "first")); string(got) != "ok" {
		t.Errorf("first holds %q", got)
	}
	assertNoTempFiles(t, dest)
}

func TestExtractCreatesDir(t *testing.T) {
	dest := filepath.Join(t.TempDir(), "a", "b")
	if err := archive.Extract(context.Background(), bytes.NewReader(tarOf(t, file("f", "x", 0o644))), dest); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(dest, "f")); err != nil || string(got) != "x" {
		t.Errorf("f holds %q (%v)", got, err)
	}
}

func TestExtractStopsOnCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := archive.Extract(ctx, bytes.NewReader(tarOf(t, file("f", "x", 0o644))), t.TempDir())
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Extract with a cancelled context: %v, want context.Canceled", err)
	}
}

// tree builds a directory tree for Write tests.
func tree(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "out/sub"), 0o755))
	must(os.WriteFile(filepath.Join(root, "out/run.sh"), []byte("#!/bin/sh\necho hi\n"), 0o755))
	must(os.WriteFile(filepath.Join(root, "out/key"), []byte("secret"), 0o600))
	must(os.WriteFile(filepath.Join(root, "out/sub/data"), bytes.Repeat([]byte{0, 1, 2, 255}, 70_000), 0o644))
	must(os.Chmod(filepath.Join(root, "out/sub"), 0o700))
	must(os.Symlink("../run.sh", filepath.Join(root, "out/sub/link")))
	must(os.Symlink("/etc", filepath.Join(root, "out/etc")))
	must(os.WriteFile(filepath.Join(root, "top"), []byte("top"), 0o640))
	must(os.Symlink("out", filepath.Join(root, "outlink")))
	return root
}

// snapshot describes a tree: for each path, its mode and its contents or
// link target.
func snapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	got := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		desc := fi.Mode().String()
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			desc += " -> " + l
		case fi.Mode().IsRegular():
			b, _ := os.ReadFile(p)
			desc += " " + string(b)
		}
		got[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestWriteRoundTrip(t *testing.T) {
	src := tree(t)
	var buf bytes.Buffer
	if err := archive.Write(context.Background(), &buf, src, []string{"top", "out", "outlink", "no/such/file", "out/sub", "top/below-a-file"}); err != nil {
		t.Fatal(err)
	}
	dest := t.TempDir()
	if err := archive.Extract(context.Background(), bytes.NewReader(buf.Bytes()), dest); err != nil {
		t.Fatal(err)
	}
	want, got := snapshot(t, src), snapshot(t, dest)
	delete(want, ".")
	delete(got, ".")
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: got %.60q, want %.60q", k, got[k], v)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: extracted but not in the source", k)
		}
	}
}

func TestWriteEntries(t *testing.T) {
	src := tree(t)
	names := func(t *testing.T, paths ...string) []string {
		t.Helper()
		var buf bytes.Buffer
		if err := archive.Write(context.Background(), &buf, src, paths); err != nil {
			t.Fatal(err)
		}
		var out []string
		tr := tar.NewReader(&buf)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				return out
			}
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, h.Name)
		}
	}
	tests := []struct {
		name  string
		paths []string
		want  []string
	}{
		{"sorted, recursive, once", []string{"top", "out/sub", "out", "out/key"},
			[]string{"out/", "out/etc", "out/key", "out/run.sh", "out/sub/", "out/sub/data", "out/sub/link", "top"}},
		{"link to a directory is not followed", []string{"outlink"}, []string{"outlink"}},
		{"missing paths skipped", []string{"nothing", "top/x", "out/nothing"}, nil},
		{"whole root without itself", []string{"."},
			[]string{"out/", "out/etc", "out/key", "out/run.sh", "out/sub/", "out/sub/data", "out/sub/link", "outlink", "top"}},
		{"os separators and dot segments", []string{filepath.Join("out", ".", "sub", "..", "key")}, []string{"out/key"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := names(t, tt.paths...)
			if !slices.Equal(got, tt.want) {
				t.Errorf("entries %q, want %q", got, tt.want)
			}
			if again := names(t, tt.paths...); !slices.Equal(again, got) {
				t.Errorf("second archive has entries %q, first %q", again, got)
			}
		})
	}
}

func TestWriteRefuses(t *testing.T) {
	src := tree(t)
	tests := []struct{ path, want string }{
		{"../x", `"../x"`},
		{"/etc", `"/etc"`},
		{"out/../../x", `"out/../../x"`},
		{"outlink/key", `"outlink/key"`},
		{"out/etc/passwd", `"out/etc/passwd"`},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			err := archive.Write(context.Background(), io.Discard, src, []string{tt.path})
			if err == nil {
				t.Fatalf("Write(%q) succeeded, want an error", tt.path)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not name the path %s", err, tt.want)
			}
		})
	}
}

func TestJoin(t *testing.T) {
	root := tree(t)
	tests := []struct {
		rel, want, wantErr string
	}{
		{rel: "", want: root},
		{rel: ".", want: root},
		{rel: "out/sub", want: filepath.Join(root, "out/sub")},
		{rel: "new/dir", want: filepath.Join(root, "new/dir")},
		{rel: "../x", wantErr: `"../x"`},
		{rel: "/tmp", wantErr: `"/tmp"`},
		{rel: "outlink", wantErr: `"outlink"`},
		{rel: "outlink/sub", wantErr: `"outlink"`},
		{rel: "top/sub", wantErr: `"top"`},
	}
	for _, tt := range tests {
		t.Run(tt.rel, func(t *testing.T) {
			got, err := archive.Join(root, tt.rel)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Join(%q) = %q, %v; want an error naming %s", tt.rel, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("Join(%q) = %q, %v; want %q", tt.rel, got, err, tt.want)
			}
		})
	}
}
