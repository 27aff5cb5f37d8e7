package artifacts

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestSelection(t *testing.T) {
	sel := Selection{Paths: []string{"out/", "**/*.xml", "bin/app"}, Exclude: []string{"out/*.log", "out/tmp"}}
	tests := []struct {
		name string
		want bool
	}{
		{"out/a.txt", true}, {"out/sub/c.txt", true}, {"out/b.log", false}, {"out/tmp/x", false},
		{"report.xml", true}, {"a/b/report.xml", true}, {"bin/app", true}, {"bin/other", false}, {"README.md", false},
	}
	for _, tt := range tests {
		if got := sel.Match(tt.name); got != tt.want {
			t.Errorf("Match(%q) = %v, want %v", tt.name, got, tt.want)
		}
	}
	un := Selection{Untracked: true, Tracked: map[string]bool{"README.md": true, "src/a.go": true}}
	for name, want := range map[string]bool{"README.md": false, "src/a.go": false, "src/new.go": true, ".git": false, ".git/HEAD": false, "build.log": true} {
		if got := un.Match(name); got != want {
			t.Errorf("untracked Match(%q) = %v, want %v", name, got, want)
		}
	}
	for _, tt := range []struct {
		sel  Selection
		want []string
	}{
		{Selection{Paths: []string{"out/*", "dist", "a/b/**/*.c"}}, []string{"out", "dist", "a/b"}},
		{Selection{Paths: []string{"*.xml"}}, []string{"."}},
		{Selection{Paths: []string{"out"}, Untracked: true}, []string{"."}},
	} {
		if got := tt.sel.Roots(); !slices.Equal(got, tt.want) {
			t.Errorf("Roots(%v) = %v, want %v", tt.sel.Paths, got, tt.want)
		}
	}
}

type entry struct {
	name, body, link string
	dir              bool
}

func tarOf(t *testing.T, entries ...entry) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: 0o644, ModTime: time.Unix(1700000000, 0)}
		switch {
		case e.dir:
			h.Typeflag, h.Mode = tar.TypeDir, 0o755
		case e.link != "":
			h.Typeflag, h.Linkname = tar.TypeSymlink, e.link
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, e.body)
	}
	tw.Close()
	return b.Bytes()
}

func readTar(t *testing.T, data []byte) map[string]string {
	t.Helper()
	out := map[string]string{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		switch h.Typeflag {
		case tar.TypeDir:
			out[h.Name] = "<dir>"
		case tar.TypeSymlink:
			out[h.Name] = "-> " + h.Linkname
		default:
			out[h.Name] = string(b)
		}
	}
}

func TestZipRoundTrip(t *testing.T) {
	in := tarOf(t, entry{name: "out/", dir: true}, entry{name: "out/a.txt", body: "A"}, entry{name: "out/b.log", body: "B"},
		entry{name: "out/link", link: "a.txt"}, entry{name: "other.txt", body: "O"})
	var z bytes.Buffer
	n, err := TarToZip(context.Background(), bytes.NewReader(in), &z, Selection{Paths: []string{"out"}, Exclude: []string{"*.log", "out/*.log"}})
	if err != nil || n != 2 {
		t.Fatalf("%d files, %v", n, err)
	}
	zr, err := zip.NewReader(bytes.NewReader(z.Bytes()), int64(z.Len()))
	if err != nil {
		t.Fatal(err)
	}
	var back bytes.Buffer
	if err := ZipToTar(context.Background(), zr, &back); err != nil {
		t.Fatal(err)
	}
	got := readTar(t, back.Bytes())
	want := map[string]string{"out/": "<dir>", "out/a.txt": "A", "out/link": "-> a.txt"}
	if len(got) != len(want) {
		t.Errorf("got %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
}

func TestZipToTarRefusesEscapes(t *testing.T) {
	for _, name := range []string{"../evil", "/etc/passwd", "a/../../b"} {
		var z bytes.Buffer
		zw := zip.NewWriter(&z)
		w, _ := zw.Create(name)
		io.WriteString(w, "x")
		zw.Close()
		zr, _ := zip.NewReader(bytes.NewReader(z.Bytes()), int64(z.Len()))
		err := ZipToTar(context.Background(), zr, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "outside the build directory") {
			t.Errorf("%q: %v", name, err)
		}
	}
}

func TestGzipAndRaw(t *testing.T) {
	in := tarOf(t, entry{name: "a.xml", body: "<a/>"}, entry{name: "b.xml", body: "<b/>"}, entry{name: "c.txt", body: "c"})
	var g bytes.Buffer
	n, err := TarToGzip(context.Background(), bytes.NewReader(in), &g, Selection{Paths: []string{"*.xml"}})
	if err != nil || n != 2 {
		t.Fatalf("%d, %v", n, err)
	}
	zr, err := gzip.NewReader(&g)
	if err != nil {
		t.Fatal(err)
	}
	zr.Multistream(false)
	var names, bodies []string
	for {
		b, _ := io.ReadAll(zr)
		names, bodies = append(names, zr.Name), append(bodies, string(b))
		if err := zr.Reset(&g); err == io.EOF {
			break
		}
		zr.Multistream(false)
	}
	if !slices.Equal(names, []string{"a.xml", "b.xml"}) || !slices.Equal(bodies, []string{"<a/>", "<b/>"}) {
		t.Errorf("members %v %v", names, bodies)
	}
	var raw bytes.Buffer
	if n, err := TarToRaw(context.Background(), bytes.NewReader(in), &raw, Selection{Paths: []string{"c.txt"}}); err != nil || n != 1 || raw.String() != "c" {
		t.Errorf("raw: %d %q %v", n, raw.String(), err)
	}
	if _, err := TarToRaw(context.Background(), bytes.NewReader(in), io.Discard, Selection{Paths: []string{"*"}}); !errors.Is(err, ErrMoreThanOne) {
		t.Errorf("raw of several files: %v", err)
	}
}

func TestFilterTar(t *testing.T) {
	in := tarOf(t, entry{name: "vendor/", dir: true}, entry{name: "vendor/x", body: "x"}, entry{name: "src/y", body: "y"})
	var out bytes.Buffer
	if _, err := FilterTar(context.Background(), bytes.NewReader(in), &out, Selection{Paths: []string{"vendor/"}}); err != nil {
		t.Fatal(err)
	}
	if got := readTar(t, out.Bytes()); len(got) != 2 || got["vendor/x"] != "x" {
		t.Errorf("%v", got)
	}
}
