package plugins

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/Masterminds/semver/v3"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/credentials"
	"oras.land/oras-go/v2/registry/remote/errcode"
	"oras.land/oras-go/v2/registry/remote/retry"
)

// The OCI layout of a published plugin: one image manifest (OCI 1.1) per
// version, of artifact type ArtifactType, with the empty config and one
// layer per platform. A layer is the plugin executable itself, unpacked
// (so its digest is the plugin file's sha256), of media type
// LayerMediaType, with annotations naming the file (AnnotationTitle), its
// platform (AnnotationOS, AnnotationArch; also the descriptor's platform)
// and, when signed, its signature (AnnotationSignature) and the signing
// key's ID (AnnotationSigningKey). The manifest's annotations carry the
// executor's name and version.
const (
	ArtifactType   = "application/vnd.berth.executor.v1"
	LayerMediaType = "application/vnd.berth.executor.binary.v1"

	AnnotationTitle      = ocispec.AnnotationTitle   // berth-executor-<name>
	AnnotationVersion    = ocispec.AnnotationVersion // on the manifest
	AnnotationName       = "vnd.berth.executor.name" // on the manifest
	AnnotationOS         = "vnd.berth.executor.os"
	AnnotationArch       = "vnd.berth.executor.arch"
	AnnotationSignature  = "vnd.berth.executor.signature"
	AnnotationSigningKey = "vnd.berth.executor.signature.key"
)

// maxManifestSize bounds the OCI manifest berth reads.
const maxManifestSize = 4 << 20

// Reference is a plugin's place in a registry. Version is what follows
// the last ":" of the path: a tag, an exact version ("1.2.3"), a semver
// constraint ("~1.2", "^1", "1.2") or "latest"; Digest what follows "@".
type Reference struct {
	Registry   string
	Repository string
	Version    string
	Digest     string
}

// ParseReference reads registry.example.com/team/berth-executor-foo:~1.2
// (an optional "oci://" in front is dropped).
func ParseReference(s string) (Reference, error) {
	text := strings.TrimPrefix(s, "oci://")
	var r Reference
	if at := strings.LastIndexByte(text, '@'); at >= 0 {
		r.Digest = text[at+1:]
		text = text[:at]
		if _, err := digest.Parse(r.Digest); err != nil {
			return Reference{}, fmt.Errorf("OCI reference %q: %q is not a digest (sha256:…)", s, r.Digest)
		}
	}
	if colon := strings.LastIndexByte(text, ':'); colon > strings.LastIndexByte(text, '/') {
		r.Version = text[colon+1:]
		text = text[:colon]
		if r.Version == "" {
			return Reference{}, fmt.Errorf("OCI reference %q: nothing after the colon (write a tag, a version or a range such as ~1.2)", s)
		}
	}
	host, repo, ok := strings.Cut(text, "/")
	if !ok || host == "" || repo == "" {
		return Reference{}, fmt.Errorf("%q is not an OCI reference (write REGISTRY/REPOSITORY[:VERSION], e.g. registry.example.com/team/berth-executor-foo:1.2.3)", s)
	}
	if _, err := registry.ParseReference(host + "/" + repo); err != nil {
		return Reference{}, fmt.Errorf("OCI reference %q: %w", s, err)
	}
	r.Registry, r.Repository = host, repo
	return r, nil
}

// Repo is registry/repository.
func (r Reference) Repo() string { return r.Registry + "/" + r.Repository }

func (r Reference) String() string {
	s := r.Repo()
	if r.Version != "" {
		s += ":" + r.Version
	}
	if r.Digest != "" {
		s += "@" + r.Digest
	}
	return s
}

// Registry talks to OCI registries.
type Registry struct {
	// PlainHTTP speaks HTTP instead of HTTPS (a registry on 127.0.0.1).
	PlainHTTP bool
	// Client does the requests; nil uses the credentials of Docker's
	// config (docker login) with oras's retrying client.
	Client remote.Client
}

func (g Registry) repository(ref Reference) (*remote.Repository, error) {
	repo, err := remote.NewRepository(ref.Repo())
	if err != nil {
		return nil, fmt.Errorf("OCI reference %s: %w", ref, err)
	}
	repo.PlainHTTP = g.PlainHTTP
	repo.Client = g.Client
	if repo.Client == nil {
		c := &auth.Client{Client: retry.DefaultClient, Cache: auth.NewCache()}
		if store, err := credentials.NewStoreFromDocker(credentials.StoreOptions{}); err == nil {
			c.Credential = credentials.Credential(store)
		}
		repo.Client = c
	}
	return repo, nil
}

// registryError words an error from a registry for the user.
func (g Registry) registryError(ref Reference, what string, err error) error {
	var resp *errcode.ErrorResponse
	var dns *net.DNSError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%s: cannot reach the registry %s (connection refused: is it running, and is the address right?): %w", what, ref.Registry, err)
	case errors.As(err, &dns):
		return fmt.Errorf("%s: cannot find the registry %s: %w", what, ref.Registry, err)
	case !g.PlainHTTP && strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		return fmt.Errorf("%s: the registry %s speaks plain HTTP: add --plain-http (only for a registry on this machine or a network you trust): %w", what, ref.Registry, err)
	case g.PlainHTTP && strings.Contains(err.Error(), "malformed HTTP response"):
		return fmt.Errorf("%s: the registry %s speaks HTTPS: drop --plain-http: %w", what, ref.Registry, err)
	case errors.As(err, &resp) && (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden):
		return fmt.Errorf("%s: the registry %s refused access (HTTP %d): log in with docker login %s: %w", what, ref.Registry, resp.StatusCode, ref.Registry, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func notFound(err error) bool {
	var resp *errcode.ErrorResponse
	return errors.Is(err, errdef.ErrNotFound) || (errors.As(err, &resp) && resp.StatusCode == http.StatusNotFound)
}

// Artifact is a published plugin found in a registry.
type Artifact struct {
	// Ref is where it was found, by tag and manifest digest.
	Ref      Reference
	Manifest ocispec.Manifest
	// Name and Version are the manifest's annotations (Version falls back
	// to a tag that is a version).
	Name, Version string
}

// Platforms lists the platforms the artifact has a layer for.
func (a Artifact) Platforms() []string {
	var out []string
	for _, l := range a.Manifest.Layers {
		if l.MediaType == LayerMediaType {
			out = append(out, l.Annotations[AnnotationOS]+"/"+l.Annotations[AnnotationArch])
		}
	}
	return out
}

// Layer returns the layer for the platform.
func (a Artifact) Layer(p Platform) (ocispec.Descriptor, error) {
	for _, l := range a.Manifest.Layers {
		if l.MediaType == LayerMediaType && l.Annotations[AnnotationOS] == p.OS && l.Annotations[AnnotationArch] == p.Arch {
			return l, nil
		}
	}
	have := a.Platforms()
	if len(have) == 0 {
		have = []string{"none"}
	}
	tag := a.Ref.Version
	if tag == "" {
		tag = "VERSION"
	}
	return ocispec.Descriptor{}, fmt.Errorf("%s has no build for %s (it has: %s): publish one with berth plugins publish --platform %s FILE %s:%s",
		a.Ref, p, strings.Join(have, ", "), p, a.Ref.Repo(), tag)
}

// Resolve finds the artifact ref names: by digest, by tag, or as the
// highest version among the repository's tags that matches ref.Version
// (see PickTag).
func (g Registry) Resolve(ctx context.Context, ref Reference) (Artifact, error) {
	repo, err := g.repository(ref)
	if err != nil {
		return Artifact{}, err
	}
	target := ref.Digest
	if target == "" {
		var tags []string
		err := repo.Tags(ctx, "", func(page []string) error {
			tags = append(tags, page...)
			return nil
		})
		if err != nil {
			if notFound(err) {
				return Artifact{}, fmt.Errorf("the registry %s has no repository %s", ref.Registry, ref.Repository)
			}
			return Artifact{}, g.registryError(ref, "listing the versions of "+ref.Repo(), err)
		}
		tag, err := PickTag(ref.Version, tags)
		if err != nil {
			return Artifact{}, fmt.Errorf("%s: %w", ref.Repo(), err)
		}
		target = tag
		ref.Version = tag
	}
	desc, rc, err := repo.FetchReference(ctx, target)
	if err != nil {
		if notFound(err) {
			return Artifact{}, fmt.Errorf("%s: not found in the registry", ref)
		}
		return Artifact{}, g.registryError(ref, "fetching "+ref.String(), err)
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, maxManifestSize+1))
	if err != nil {
		return Artifact{}, g.registryError(ref, "fetching "+ref.String(), err)
	}
	if len(data) > maxManifestSize {
		return Artifact{}, fmt.Errorf("%s: its manifest is larger than %d bytes", ref, maxManifestSize)
	}
	if digest.FromBytes(data) != desc.Digest {
		return Artifact{}, fmt.Errorf("%s: the manifest the registry sent does not have its digest %s", ref, desc.Digest)
	}
	a, err := parseArtifact(ref, desc, data)
	if err != nil {
		return Artifact{}, err
	}
	return a, nil
}

func parseArtifact(ref Reference, desc ocispec.Descriptor, data []byte) (Artifact, error) {
	if desc.MediaType != ocispec.MediaTypeImageManifest {
		return Artifact{}, fmt.Errorf("%s is a %s, not a berth executor plugin (an OCI image manifest of artifact type %s)", ref, desc.MediaType, ArtifactType)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return Artifact{}, fmt.Errorf("%s: unreadable manifest: %w", ref, err)
	}
	if m.ArtifactType != ArtifactType && m.Config.MediaType != ArtifactType {
		kind := m.ArtifactType
		if kind == "" {
			kind = m.Config.MediaType
		}
		return Artifact{}, fmt.Errorf("%s is not a berth executor plugin: its artifact type is %q, not %q", ref, kind, ArtifactType)
	}
	ref.Digest = desc.Digest.String()
	a := Artifact{Ref: ref, Manifest: m, Name: m.Annotations[AnnotationName], Version: m.Annotations[AnnotationVersion]}
	if a.Version == "" && IsExactVersion(ref.Version) {
		a.Version = ref.Version
	}
	return a, nil
}

// FetchLayer streams a layer's content; the caller checks its digest.
func (g Registry) FetchLayer(ctx context.Context, a Artifact, layer ocispec.Descriptor) (io.ReadCloser, error) {
	repo, err := g.repository(a.Ref)
	if err != nil {
		return nil, err
	}
	rc, err := repo.Blobs().Fetch(ctx, layer)
	if err != nil {
		return nil, g.registryError(a.Ref, "downloading "+layer.Annotations[AnnotationTitle]+" from "+a.Ref.String(), err)
	}
	return rc, nil
}

var exactVersion = regexp.MustCompile(`^v?\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$`)

// isExactVersion says whether s is a full version (1.2.3, v1.2.3-rc.1),
// not a range or a partial version.
func IsExactVersion(s string) bool { return exactVersion.MatchString(s) }

// PickTag chooses the tag to install among a repository's tags for what
// was asked:
//
//   - "" or "latest": the highest version tag (pre-releases left out); a
//     literal "latest" tag only when no tag is a version;
//   - an exact version ("1.2.3" or "v1.2.3"): the tag with that version;
//   - a semver constraint ("~1.2", "^1", "1.2", ">=1.2 <2"): the highest
//     version tag it allows;
//   - anything else: that tag, which must exist.
func PickTag(want string, tags []string) (string, error) {
	type version struct {
		tag string
		v   *semver.Version
	}
	var versions []version
	for _, t := range tags {
		if !IsExactVersion(t) {
			continue
		}
		if v, err := semver.NewVersion(t); err == nil {
			versions = append(versions, version{t, v})
		}
	}
	slices.SortFunc(versions, func(a, b version) int { return a.v.Compare(b.v) })
	list := func() string {
		if len(versions) == 0 {
			return "it has no version tags; tags: " + orNone(tags)
		}
		names := make([]string, len(versions))
		for i, v := range versions {
			names[i] = v.tag
		}
		return "versions: " + strings.Join(names, ", ")
	}
	switch {
	case want == "" || want == "latest":
		for i := len(versions) - 1; i >= 0; i-- {
			if versions[i].v.Prerelease() == "" {
				return versions[i].tag, nil
			}
		}
		if slices.Contains(tags, "latest") {
			return "latest", nil
		}
		return "", fmt.Errorf("no released version to install (%s)", list())
	case IsExactVersion(want):
		w, _ := semver.NewVersion(want)
		if slices.Contains(tags, want) {
			return want, nil
		}
		for _, v := range versions {
			if v.v.Equal(w) {
				return v.tag, nil
			}
		}
		return "", fmt.Errorf("no version %s (%s)", want, list())
	}
	c, err := semver.NewConstraint(want)
	if err != nil {
		if slices.Contains(tags, want) {
			return want, nil
		}
		return "", fmt.Errorf("no tag %q, and it is not a version range either (%s)", want, list())
	}
	for i := len(versions) - 1; i >= 0; i-- {
		if c.Check(versions[i].v) {
			return versions[i].tag, nil
		}
	}
	return "", fmt.Errorf("no version matches %s (%s)", want, list())
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// PublishFile is one build of a plugin to publish.
type PublishFile struct {
	Path     string
	Platform Platform
}

// Publication is what Publish pushes.
type Publication struct {
	// Ref must name a tag (Version), no digest.
	Ref Reference
	// Name is the executor's name, Version its version (may be empty).
	Name, Version string
	Files         []PublishFile
	// Key signs each layer's digest when set.
	Key ed25519.PrivateKey
	// Created stamps the manifest (org.opencontainers.image.created).
	Created time.Time
}

// Publish pushes the files as layers of one artifact and tags it. When the
// tag already holds this plugin, the layers of other platforms are kept, so
// that each platform's build can be published on its own.
func (g Registry) Publish(ctx context.Context, pub Publication, log *slog.Logger) (Artifact, error) {
	ref := pub.Ref
	if ref.Version == "" || ref.Digest != "" {
		return Artifact{}, fmt.Errorf("publishing to %s: name a tag (REPOSITORY:VERSION), not a digest", ref)
	}
	repo, err := g.repository(ref)
	if err != nil {
		return Artifact{}, err
	}
	var layers []ocispec.Descriptor
	seen := map[Platform]bool{}
	for _, f := range pub.Files {
		if seen[f.Platform] {
			return Artifact{}, fmt.Errorf("publishing to %s: two files for %s", ref, f.Platform)
		}
		seen[f.Platform] = true
		l, err := g.pushLayer(ctx, repo, ref, pub, f)
		if err != nil {
			return Artifact{}, err
		}
		layers = append(layers, l)
	}
	// Keep the other platforms of what the tag holds now.
	if _, rc, err := repo.FetchReference(ctx, ref.Version); err == nil {
		data, rerr := io.ReadAll(io.LimitReader(rc, maxManifestSize))
		rc.Close()
		if rerr != nil {
			return Artifact{}, g.registryError(ref, "reading what "+ref.String()+" holds now", rerr)
		}
		var old ocispec.Manifest
		if json.Unmarshal(data, &old) != nil || (old.ArtifactType != ArtifactType && old.Config.MediaType != ArtifactType) {
			kind := old.ArtifactType
			if kind == "" {
				kind = old.Config.MediaType
			}
			return Artifact{}, fmt.Errorf("publishing to %s: the tag holds something else than a berth executor plugin (%q); refusing to overwrite it", ref, kind)
		}
		if n := old.Annotations[AnnotationName]; n != "" && n != pub.Name {
			return Artifact{}, fmt.Errorf("publishing to %s: the tag holds executor %q, not %q", ref, n, pub.Name)
		}
		for _, l := range old.Layers {
			p := Platform{OS: l.Annotations[AnnotationOS], Arch: l.Annotations[AnnotationArch]}
			if l.MediaType == LayerMediaType && !seen[p] {
				log.Info("keeping a platform already published", "ref", ref.String(), "platform", p.String())
				layers = append(layers, l)
			}
		}
	} else if !notFound(err) {
		return Artifact{}, g.registryError(ref, "looking at what "+ref.String()+" holds now", err)
	}
	slices.SortFunc(layers, func(a, b ocispec.Descriptor) int {
		return strings.Compare(a.Annotations[AnnotationOS]+"/"+a.Annotations[AnnotationArch], b.Annotations[AnnotationOS]+"/"+b.Annotations[AnnotationArch])
	})

	empty := ocispec.DescriptorEmptyJSON
	if err := pushIfMissing(ctx, repo, empty, func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(empty.Data)), nil }); err != nil {
		return Artifact{}, g.registryError(ref, "pushing the config of "+ref.String(), err)
	}
	empty.Data = nil
	annotations := map[string]string{
		AnnotationName:            pub.Name,
		AnnotationTitle:           FilePrefix + pub.Name,
		ocispec.AnnotationCreated: pub.Created.UTC().Format(time.RFC3339),
	}
	if pub.Version != "" {
		annotations[AnnotationVersion] = pub.Version
	}
	m := ocispec.Manifest{
		Versioned:    specs.Versioned{SchemaVersion: 2},
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: ArtifactType,
		Config:       empty,
		Layers:       layers,
		Annotations:  annotations,
	}
	data, err := json.Marshal(m)
	if err != nil {
		return Artifact{}, fmt.Errorf("encoding the manifest: %w", err)
	}
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(data), Size: int64(len(data)), ArtifactType: ArtifactType}
	if err := repo.PushReference(ctx, desc, bytes.NewReader(data), ref.Version); err != nil {
		return Artifact{}, g.registryError(ref, "pushing the manifest of "+ref.String(), err)
	}
	ref.Digest = desc.Digest.String()
	return Artifact{Ref: ref, Manifest: m, Name: pub.Name, Version: pub.Version}, nil
}

func (g Registry) pushLayer(ctx context.Context, repo *remote.Repository, ref Reference, pub Publication, f PublishFile) (ocispec.Descriptor, error) {
	sum, size, err := fileSHA256(f.Path)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	l := ocispec.Descriptor{
		MediaType: LayerMediaType,
		Digest:    digest.NewDigestFromEncoded(digest.SHA256, sum),
		Size:      size,
		Platform:  &ocispec.Platform{OS: f.Platform.OS, Architecture: f.Platform.Arch},
		Annotations: map[string]string{
			AnnotationTitle: FilePrefix + pub.Name,
			AnnotationOS:    f.Platform.OS,
			AnnotationArch:  f.Platform.Arch,
		},
	}
	if pub.Key != nil {
		l.Annotations[AnnotationSignature] = Sign(pub.Key, sum)
		l.Annotations[AnnotationSigningKey] = KeyID(pub.Key.Public().(ed25519.PublicKey))
	}
	err = pushIfMissing(ctx, repo, l, func() (io.ReadCloser, error) { return os.Open(f.Path) })
	if err != nil {
		return ocispec.Descriptor{}, g.registryError(ref, "pushing "+f.Path+" ("+f.Platform.String()+")", err)
	}
	return l, nil
}

// pushIfMissing pushes a blob unless the repository has it.
func pushIfMissing(ctx context.Context, repo *remote.Repository, desc ocispec.Descriptor, open func() (io.ReadCloser, error)) error {
	blob := ocispec.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size}
	ok, err := repo.Blobs().Exists(ctx, blob)
	if err != nil {
		return err
	}
	if ok {
		return nil
	}
	rc, err := open()
	if err != nil {
		return err
	}
	defer rc.Close()
	if err := repo.Blobs().Push(ctx, blob, rc); err != nil && !errors.Is(err, errdef.ErrAlreadyExists) {
		return err
	}
	return nil
}
