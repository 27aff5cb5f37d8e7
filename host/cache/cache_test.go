package cache

import (
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
)

func save(t *testing.T, s Store, key, content string) {
	t.Helper()
	err := s.Save(context.Background(), key, func(_ context.Context, w io.Writer) error {
		_, err := io.WriteString(w, content)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestOpenFallsBackAndMisses(t *testing.T) {
	s := Store{Dir: t.TempDir()}
	save(t, s, "main/deps", "main-content")
	save(t, s, "feature/x y", "feature-content")
	tests := []struct {
		keys    []string
		wantKey string
		want    string
		miss    bool
	}{
		{keys: []string{"feature/x y"}, wantKey: "feature/x y", want: "feature-content"},
		{keys: []string{"nope", "", "main/deps"}, wantKey: "main/deps", want: "main-content"},
		{keys: []string{"main_deps"}, miss: true}, // similar file-name prefix, other key
		{keys: nil, miss: true},
	}
	for _, tt := range tests {
		rc, key, err := s.Open(tt.keys...)
		if tt.miss {
			if !errors.Is(err, ErrMiss) {
				t.Errorf("Open(%q) = %q, %v; want a miss", tt.keys, key, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("Open(%q): %v", tt.keys, err)
		}
		data, _ := io.ReadAll(rc)
		rc.Close()
		if key != tt.wantKey || string(data) != tt.want {
			t.Errorf("Open(%q) = %q %q, want %q %q", tt.keys, key, data, tt.wantKey, tt.want)
		}
	}
}

func TestFailedSaveKeepsTheOldArchive(t *testing.T) {
	s := Store{Dir: t.TempDir()}
	save(t, s, "k", "old")
	err := s.Save(context.Background(), "k", func(_ context.Context, w io.Writer) error {
		io.WriteString(w, "half of the n")
		return errors.New("job died")
	})
	if err == nil || !strings.Contains(err.Error(), `"k"`) {
		t.Fatalf("error %v; want one naming the key", err)
	}
	rc, _, err := s.Open("k")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if data, _ := io.ReadAll(rc); string(data) != "old" {
		t.Errorf("archive is %q after a failed save, want the old one", data)
	}
	entries, _ := os.ReadDir(s.Dir)
	if len(entries) != 1 {
		t.Errorf("%d files in the cache folder, want only the archive (no partial files)", len(entries))
	}
}
