package kubernetes

import (
	"archive/tar"
	"bytes"
	"strings"
	"testing"
)

// tarOf makes a tar stream of entries: "dir/" a directory, "name@target"
// a symbolic link, anything else a small file.
func tarOf(t testing.TB, entries []string) string {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e, Mode: 0o644, Typeflag: tar.TypeReg, Size: 1}
		switch {
		case strings.HasSuffix(e, "/"):
			hdr = &tar.Header{Name: e, Mode: 0o755, Typeflag: tar.TypeDir}
		case strings.Contains(e, "@"):
			name, target, _ := strings.Cut(e, "@")
			hdr = &tar.Header{Name: name, Linkname: target, Mode: 0o777, Typeflag: tar.TypeSymlink}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if hdr.Size == 1 {
			tw.Write([]byte("x"))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}
