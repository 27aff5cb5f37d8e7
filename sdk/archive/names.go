package archive

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"path"
	"strings"
)

// CleanRelative cleans name, a slash-separated path that must stay below
// the directory it is relative to, and returns "." for the directory
// itself. An absolute path, or one that climbs out with "..", is an error
// saying so (for the caller to prefix with what the path is).
func CleanRelative(name string) (string, error) {
	if strings.HasPrefix(name, "/") {
		return "", errors.New("it is an absolute path")
	}
	p := path.Clean(name)
	if p == ".." || strings.HasPrefix(p, "../") {
		return "", errors.New("it leads outside the directory")
	}
	return p, nil
}

// JobDirName turns a job ID into a directory name: letters, digits, '.',
// '_' and '-' are kept, anything else becomes '_', and a hash of the ID is
// added when something was changed (or the name is long), so that two IDs
// never share a directory.
func JobDirName(jobID string) string {
	var b strings.Builder
	for _, r := range jobID {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	name := b.String()
	if name == jobID && len(name) <= 64 && strings.Trim(name, ".") != "" {
		return name
	}
	sum := sha256.Sum256([]byte(jobID))
	if len(name) > 48 {
		name = name[:48]
	}
	return name + "-" + hex.EncodeToString(sum[:6])
}
