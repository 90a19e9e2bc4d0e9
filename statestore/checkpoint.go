package statestore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// ErrNotCheckpoint is returned by Install for a directory that holds no
// pebble store (no CURRENT or MANIFEST file).
var ErrNotCheckpoint = errors.New("statestore: not a store checkpoint")

// Install makes the checkpoint in src (written by Pebble.Checkpoint, or
// restored from one, e.g. downloaded from a snapshot) the store in dir,
// replacing whatever dir held; OpenPebble opens it then. src and dir must be
// on the same file system: src is renamed, not copied, so a crash leaves
// either the old dir or none plus src, never a half-installed store. The
// store in dir must be closed.
func Install(src, dir string) error {
	if err := isCheckpoint(src); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("statestore: install %s: remove %s: %w", src, dir, err)
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("statestore: install %s: %w", src, err)
	}
	if err := os.Rename(src, dir); err != nil {
		return fmt.Errorf("statestore: install %s as %s: %w", src, dir, err)
	}
	return nil
}

// isCheckpoint checks that dir looks like a pebble store: a checkpoint has a
// MANIFEST and a marker (CURRENT, or a marker.manifest file).
func isCheckpoint(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNotCheckpoint, err)
	}
	var manifest, marker bool
	for _, e := range ents {
		n := e.Name()
		switch {
		case len(n) >= 8 && n[:8] == "MANIFEST":
			manifest = true
		case n == "CURRENT" || len(n) >= 15 && n[:15] == "marker.manifest":
			marker = true
		}
	}
	if !manifest || !marker {
		return fmt.Errorf("%w: %s has no MANIFEST and marker", ErrNotCheckpoint, dir)
	}
	return nil
}
