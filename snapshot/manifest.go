package snapshot

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Manifest describes one snapshot of a partition's store: what it holds and
// the files to fetch. It is written after every file is stored, so a Manifest
// in the bucket names files that were all uploaded.
type Manifest struct {
	// Type and Partition name the partition.
	Type      string `json:"type"`
	Partition int    `json:"partition"`
	// ChangelogSeq is the changelog sequence the store reflects: a restore
	// replays the changelog from ChangelogSeq+1.
	ChangelogSeq uint64 `json:"changelog_seq"`
	// ChangelogID is the identity of the changelog stream the store was
	// built from (see partition's changelogID): a snapshot of an earlier
	// stream of the same name must not be restored.
	ChangelogID []byte `json:"changelog_id"`
	// Offset and Epoch are the store's input offset and owner epoch.
	Offset uint64 `json:"offset"`
	Epoch  uint64 `json:"epoch"`
	// StateVersion is the state version of the stores' values (at least 1;
	// 0 in snapshots taken before versions were recorded, read as 1); during
	// a migration, the version it migrates to.
	StateVersion int `json:"state_version"`
	// Files are the checkpoint's files.
	Files []File `json:"files"`
	// Created is when the upload finished.
	Created time.Time `json:"created"`

	// Name is the manifest's object name in the bucket (set when read or written).
	Name string `json:"-"`
}

// File is one file of a checkpoint directory.
type File struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"` // hex
}

// Size is the total size of the snapshot's files.
func (m *Manifest) Size() int64 {
	var n int64
	for _, f := range m.Files {
		n += f.Size
	}
	return n
}

// Object names in the bucket.
const (
	filesPrefix     = "files/"
	manifestsPrefix = "manifests/"
)

func filePrefix(p int) string             { return filesPrefix + strconv.Itoa(p) + "/" }
func fileObject(p int, sum string) string { return filePrefix(p) + sum }
func manifestPrefix(p int) string         { return manifestsPrefix + strconv.Itoa(p) + "/" }

// manifestObject names a manifest by its changelog identity (hex), then
// changelog sequence and creation time, so that the manifests of one
// changelog sort by sequence.
func manifestObject(p int, changelogID []byte, seq uint64, created time.Time) string {
	return fmt.Sprintf("%s%s/%020d-%020d", manifestPrefix(p), lineage(changelogID), seq, created.UnixNano())
}

// lineage is the name token of a changelog identity.
func lineage(changelogID []byte) string {
	if len(changelogID) == 0 {
		return "none"
	}
	return hex.EncodeToString(changelogID)
}

// manifestRef is what a manifest's object name says of it.
type manifestRef struct {
	name    string
	lineage string
	seq     uint64
	created int64 // Unix nanoseconds
}

// parseManifestName reads a manifest object name of partition p.
func parseManifestName(name string, p int) (manifestRef, bool) {
	rest, ok := strings.CutPrefix(name, manifestPrefix(p))
	if !ok {
		return manifestRef{}, false
	}
	lin, rest, ok := strings.Cut(rest, "/")
	if !ok {
		return manifestRef{}, false
	}
	seqs, nanos, ok := strings.Cut(rest, "-")
	if !ok {
		return manifestRef{}, false
	}
	seq, err1 := strconv.ParseUint(seqs, 10, 64)
	created, err2 := strconv.ParseInt(nanos, 10, 64)
	if err1 != nil || err2 != nil {
		return manifestRef{}, false
	}
	return manifestRef{name: name, lineage: lin, seq: seq, created: created}, true
}

func encodeManifest(m *Manifest) ([]byte, error) { return json.Marshal(m) }

func decodeManifest(name string, data []byte) (Manifest, error) {
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return m, fmt.Errorf("snapshot: manifest %s: %w", name, err)
	}
	m.Name = name
	return m, nil
}
