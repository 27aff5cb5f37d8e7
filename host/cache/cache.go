// Package cache keeps job caches on the runner's disk: one tar archive per
// key under a folder (gitlab-runner's cache_dir), written atomically so a
// job that dies while saving never leaves half an archive behind.
package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// ErrMiss is returned when no archive exists for any of the keys asked.
var ErrMiss = errors.New("cache miss")

// Store is a folder of cache archives.
type Store struct {
	Dir string
}

// path is where key's archive lives. Keys are user text (with slashes,
// dots, anything): the file name is a readable prefix plus a hash.
func (s Store) path(key string) string {
	clean := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
			return r
		}
		return '_'
	}, key)
	if len(clean) > 64 {
		clean = clean[:64]
	}
	sum := sha256.Sum256([]byte(key))
	return filepath.Join(s.Dir, clean+"-"+hex.EncodeToString(sum[:8])+".tar")
}

// Open returns the archive of the first key that has one, and that key.
// With none, the error is ErrMiss.
func (s Store) Open(keys ...string) (io.ReadCloser, string, error) {
	for _, k := range keys {
		if k == "" {
			continue
		}
		f, err := os.Open(s.path(k))
		if err == nil {
			return f, k, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return nil, "", fmt.Errorf("opening the cache for key %q: %w", k, err)
		}
	}
	return nil, "", ErrMiss
}

// Save stores what write produces as key's archive, replacing the old one
// only once the new one is complete.
func (s Store) Save(ctx context.Context, key string, write func(ctx context.Context, w io.Writer) error) error {
	if key == "" {
		return errors.New("saving a cache: the key is empty")
	}
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return fmt.Errorf("making the cache folder: %w", err)
	}
	tmp, err := os.CreateTemp(s.Dir, ".partial-*")
	if err != nil {
		return fmt.Errorf("saving the cache for key %q: %w", key, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if err := write(ctx, tmp); err != nil {
		tmp.Close()
		return fmt.Errorf("saving the cache for key %q: %w", key, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("saving the cache for key %q: %w", key, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("saving the cache for key %q: %w", key, err)
	}
	if err := os.Rename(tmp.Name(), s.path(key)); err != nil {
		return fmt.Errorf("saving the cache for key %q: %w", key, err)
	}
	return nil
}
