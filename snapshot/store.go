package snapshot

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

var (
	// ErrNoSnapshot is returned by Download when the partition has no
	// snapshot that is accepted and whole.
	ErrNoSnapshot = errors.New("snapshot: no usable snapshot")
	// ErrCorrupt marks a snapshot file whose content is not the sha256 or
	// size its manifest names.
	ErrCorrupt = errors.New("snapshot: file does not match its manifest")
)

// Bucket is the object store bucket of the snapshots of actor type typ.
func Bucket(typ string) string { return "EDDY_SNAP_" + typ }

// Store is the snapshot bucket of one actor type. Its methods are safe for
// concurrent use; uploads and prunes of one partition should not overlap
// (see the package doc for what happens when they do).
type Store struct {
	typ string
	obs jetstream.ObjectStore
	cfg Config
	log *slog.Logger
}

// Open looks up the bucket of actor type typ, creating it if missing. An
// existing bucket is used as it is.
func Open(ctx context.Context, js jetstream.JetStream, typ string, cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	name := Bucket(typ)
	obs, err := js.ObjectStore(ctx, name)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		obs, err = js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{
			Bucket:      name,
			Description: "eddy snapshots of the stores of " + typ,
			Storage:     jetstream.FileStorage,
			Replicas:    cfg.Replicas,
		})
		if errors.Is(err, jetstream.ErrBucketExists) { // created meanwhile by another node
			obs, err = js.ObjectStore(ctx, name)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("snapshot: open bucket %s: %w", name, err)
	}
	return &Store{typ: typ, obs: obs, cfg: cfg, log: log}, nil
}

// Lookup returns the existing bucket of actor type typ, or ErrNoSnapshot
// when there is none: a restore that finds no bucket creates none.
func Lookup(ctx context.Context, js jetstream.JetStream, typ string, cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	obs, err := js.ObjectStore(ctx, Bucket(typ))
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("%w: no bucket %s", ErrNoSnapshot, Bucket(typ))
	}
	if err != nil {
		return nil, fmt.Errorf("snapshot: look up bucket %s: %w", Bucket(typ), err)
	}
	return &Store{typ: typ, obs: obs, cfg: cfg, log: log}, nil
}

// UploadStats says what an upload did.
type UploadStats struct {
	// Files and Bytes are the checkpoint's; Uploaded and UploadedBytes what
	// was not in the bucket already.
	Files, Uploaded      int
	Bytes, UploadedBytes int64
}

// afterFile runs after each file an upload stores (tests only).
var afterFile func()

// Upload stores the checkpoint in dir as a snapshot described by m (Type,
// Partition, ChangelogSeq, ChangelogID, Offset, Epoch, StateVersion; Files
// and Created are filled in). Files the partition's prefix holds already,
// by sha256 and size, are not uploaded again. The manifest is written last:
// if Upload fails, there is no manifest, and the files it stored are
// removed by a later Prune.
func (s *Store) Upload(ctx context.Context, dir string, m Manifest) (Manifest, UploadStats, error) {
	var st UploadStats
	m.Type = s.typ
	ents, err := os.ReadDir(dir)
	if err != nil {
		return m, st, fmt.Errorf("snapshot: upload: %w", err)
	}
	have, err := s.objects(ctx, filePrefix(m.Partition))
	if err != nil {
		return m, st, err
	}
	m.Files = m.Files[:0]
	for _, e := range ents {
		if !e.Type().IsRegular() {
			return m, st, fmt.Errorf("snapshot: upload: %s in %s is not a regular file", e.Name(), dir)
		}
		path := filepath.Join(dir, e.Name())
		sum, size, err := hashFile(path)
		if err != nil {
			return m, st, err
		}
		m.Files = append(m.Files, File{Name: e.Name(), Size: size, SHA256: sum})
		st.Files++
		st.Bytes += size
		obj := fileObject(m.Partition, sum)
		if info, ok := have[obj]; ok && int64(info.Size) == size {
			continue // content-addressed: the same bytes are there
		}
		if err := s.putFile(ctx, obj, path); err != nil {
			return m, st, err
		}
		st.Uploaded++
		st.UploadedBytes += size
		if afterFile != nil {
			afterFile()
		}
	}
	m.Created = time.Now().UTC()
	m.Name = manifestObject(m.Partition, m.ChangelogID, m.ChangelogSeq, m.Created)
	data, err := encodeManifest(&m)
	if err != nil {
		return m, st, err
	}
	if _, err := s.obs.PutBytes(ctx, m.Name, data); err != nil {
		return m, st, fmt.Errorf("snapshot: write manifest %s: %w", m.Name, err)
	}
	return m, st, nil
}

func (s *Store) putFile(ctx context.Context, obj, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("snapshot: upload: %w", err)
	}
	defer f.Close()
	if _, err := s.obs.Put(ctx, jetstream.ObjectMeta{Name: obj}, f); err != nil {
		return fmt.Errorf("snapshot: upload %s as %s: %w", path, obj, err)
	}
	return nil
}

// hashFile returns the hex sha256 and the size of the file at path.
func hashFile(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, fmt.Errorf("snapshot: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("snapshot: hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// objects lists the bucket's objects under prefix, by name.
func (s *Store) objects(ctx context.Context, prefix string) (map[string]*jetstream.ObjectInfo, error) {
	infos, err := s.obs.List(ctx)
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return map[string]*jetstream.ObjectInfo{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("snapshot: list %s: %w", Bucket(s.typ), err)
	}
	out := make(map[string]*jetstream.ObjectInfo)
	for _, info := range infos {
		if strings.HasPrefix(info.Name, prefix) {
			out[info.Name] = info
		}
	}
	return out, nil
}

// manifestRefs returns partition p's manifests, newest first (by creation
// time, then sequence).
func (s *Store) manifestRefs(ctx context.Context, p int) ([]manifestRef, error) {
	objs, err := s.objects(ctx, manifestPrefix(p))
	if err != nil {
		return nil, err
	}
	refs := make([]manifestRef, 0, len(objs))
	for name := range objs {
		if r, ok := parseManifestName(name, p); ok {
			refs = append(refs, r)
		}
	}
	slices.SortFunc(refs, func(a, b manifestRef) int {
		if c := cmp.Compare(b.created, a.created); c != 0 {
			return c
		}
		return cmp.Compare(b.seq, a.seq)
	})
	return refs, nil
}

// ofChangelog returns the refs of the changelog changelogID, newest (by
// sequence) first.
func ofChangelog(refs []manifestRef, changelogID []byte) []manifestRef {
	lin := lineage(changelogID)
	var out []manifestRef
	for _, r := range refs {
		if r.lineage == lin {
			out = append(out, r)
		}
	}
	slices.SortStableFunc(out, func(a, b manifestRef) int { return cmp.Compare(b.seq, a.seq) })
	return out
}

// Manifests returns the manifests of partition p, of every changelog,
// newest (by creation time) first.
func (s *Store) Manifests(ctx context.Context, p int) ([]Manifest, error) {
	refs, err := s.manifestRefs(ctx, p)
	if err != nil {
		return nil, err
	}
	out := make([]Manifest, 0, len(refs))
	for _, r := range refs {
		m, err := s.readManifest(ctx, r.name)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

func (s *Store) readManifest(ctx context.Context, name string) (Manifest, error) {
	data, err := s.obs.GetBytes(ctx, name)
	if err != nil {
		return Manifest{}, fmt.Errorf("snapshot: read manifest %s: %w", name, err)
	}
	return decodeManifest(name, data)
}

// Downloaded is what Download restored.
type Downloaded struct {
	// Manifest is the snapshot that was restored.
	Manifest Manifest
	// Skipped says why each newer manifest was not used (not accepted, a
	// file corrupt or missing), newest first.
	Skipped []error
}

// Download restores partition p's newest snapshot of the changelog whose
// identity is changelogID (by changelog sequence) that accept accepts
// (nil: any) into dir, which must not exist: it fetches every file of the
// manifest and verifies its size and sha256. When a file is missing or
// corrupt (ErrCorrupt), or accept returns an error, it tries the previous
// manifest, and so on; dir is removed before each next try. With none
// left it returns ErrNoSnapshot (with the reasons) and no dir. Errors of
// NATS itself (listing, or ctx ending) are returned as they are.
func (s *Store) Download(ctx context.Context, p int, changelogID []byte, dir string, accept func(Manifest) error) (Downloaded, error) {
	var d Downloaded
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		return d, fmt.Errorf("snapshot: download into %s: it exists", dir)
	}
	refs, err := s.manifestRefs(ctx, p)
	if err != nil {
		return d, err
	}
	refs = ofChangelog(refs, changelogID)
	for _, r := range refs {
		name := r.name
		m, err := s.readManifest(ctx, name)
		if err == nil && accept != nil {
			err = accept(m)
		}
		if err == nil {
			err = s.fetch(ctx, &m, dir)
		}
		if ctx.Err() != nil {
			_ = os.RemoveAll(dir)
			return d, ctx.Err()
		}
		if err != nil {
			_ = os.RemoveAll(dir)
			s.log.Warn("snapshot not usable; trying the previous one", "type", s.typ, "partition", p, "manifest", name, "err", err)
			d.Skipped = append(d.Skipped, fmt.Errorf("%s: %w", name, err))
			continue
		}
		d.Manifest = m
		return d, nil
	}
	return d, fmt.Errorf("%w of %s partition %d (%d manifests of its changelog): %w", ErrNoSnapshot, s.typ, p, len(refs), errors.Join(d.Skipped...))
}

// fetch downloads m's files into dir, verifying each.
func (s *Store) fetch(ctx context.Context, m *Manifest, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	for _, f := range m.Files {
		if f.Name != filepath.Base(f.Name) || f.Name == "." || f.Name == ".." {
			return fmt.Errorf("%w: bad file name %q", ErrCorrupt, f.Name)
		}
		if err := s.fetchFile(ctx, fileObject(m.Partition, f.SHA256), filepath.Join(dir, f.Name), f); err != nil {
			return err
		}
	}
	return syncDir(dir)
}

func (s *Store) fetchFile(ctx context.Context, obj, path string, want File) error {
	r, err := s.obs.Get(ctx, obj)
	if err != nil {
		return fmt.Errorf("snapshot: fetch %s (%s): %w", obj, want.Name, err)
	}
	defer r.Close()
	out, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	defer out.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), r)
	if err != nil {
		return fmt.Errorf("snapshot: fetch %s (%s): %w", obj, want.Name, err)
	}
	if sum := hex.EncodeToString(h.Sum(nil)); n != want.Size || sum != want.SHA256 {
		return fmt.Errorf("%w: %s is %d bytes with sha256 %s, want %d bytes with %s", ErrCorrupt, want.Name, n, sum, want.Size, want.SHA256)
	}
	if err := out.Sync(); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	return out.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("snapshot: sync %s: %w", dir, err)
	}
	return nil
}

// PruneStats says what a Prune removed.
type PruneStats struct {
	Manifests, Files int
	Bytes            int64
	// OldestKept is the changelog sequence of the oldest manifest kept of
	// the changelog (0: none): the changelog may be trimmed below it.
	OldestKept uint64
}

// Prune keeps the newest Config.Keep manifests of partition p of the
// changelog whose identity is changelogID and deletes its older ones, and
// the manifests of other changelogs (a stream of the same name deleted and
// created again: they can never be restored) created before the newest
// kept one. Then it deletes the files of p that no remaining manifest
// references and that are older than Config.GCGrace (the leftovers of
// failed uploads, and files only deleted manifests used).
func (s *Store) Prune(ctx context.Context, p int, changelogID []byte) (PruneStats, error) {
	var st PruneStats
	refs, err := s.manifestRefs(ctx, p)
	if err != nil {
		return st, err
	}
	mine := ofChangelog(refs, changelogID)
	keep := mine[:min(len(mine), s.cfg.Keep)]
	for i, r := range keep {
		if i == 0 || r.seq < st.OldestKept {
			st.OldestKept = r.seq
		}
	}
	drop := map[string]bool{}
	for _, r := range mine[len(keep):] {
		drop[r.name] = true
	}
	if len(keep) > 0 {
		newest := slices.MaxFunc(keep, func(a, b manifestRef) int { return cmp.Compare(a.created, b.created) }).created
		lin := lineage(changelogID)
		for _, r := range refs {
			if r.lineage != lin && r.created < newest {
				drop[r.name] = true
			}
		}
	}
	used := make(map[string]bool)
	for _, r := range refs {
		if drop[r.name] {
			continue
		}
		m, err := s.readManifest(ctx, r.name)
		if err != nil {
			// A manifest that cannot be read keeps nothing alive, but it
			// must not make Prune delete what it may still reference.
			return st, err
		}
		for _, f := range m.Files {
			used[fileObject(p, f.SHA256)] = true
		}
	}
	for _, r := range refs {
		if !drop[r.name] {
			continue
		}
		if err := s.obs.Delete(ctx, r.name); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
			return st, fmt.Errorf("snapshot: delete manifest %s: %w", r.name, err)
		}
		st.Manifests++
	}
	files, err := s.objects(ctx, filePrefix(p))
	if err != nil {
		return st, err
	}
	for name, info := range files {
		if used[name] || time.Since(info.ModTime) < s.cfg.GCGrace {
			continue
		}
		if err := s.obs.Delete(ctx, name); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
			return st, fmt.Errorf("snapshot: delete %s: %w", name, err)
		}
		st.Files++
		st.Bytes += int64(info.Size)
	}
	if st.Manifests > 0 || st.Files > 0 {
		s.log.Info("snapshots pruned", "type", s.typ, "partition", p, "manifests", st.Manifests, "files", st.Files, "bytes", st.Bytes)
	}
	return st, nil
}
