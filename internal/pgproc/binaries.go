package pgproc

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// EnvBin names the environment variable that, when set, is the directory
// holding the initdb and postgres executables to run.
const EnvBin = "EDDY_PG_BIN"

// debianBins is where Debian and Ubuntu install each PostgreSQL major
// version side by side, none of them on PATH.
const debianBins = "/usr/lib/postgresql/*/bin"

// ErrNoBinaries: no PostgreSQL installation was found where Binaries looks.
// Test helpers skip on it; a misconfigured $EDDY_PG_BIN is a different error,
// so that it fails rather than skips.
var ErrNoBinaries = errors.New("pgproc: no PostgreSQL binaries (initdb, postgres)")

// Binaries returns the directory holding initdb and postgres: $EDDY_PG_BIN if
// set (an error, not ErrNoBinaries, if it lacks either), else the highest
// major version under /usr/lib/postgresql/*/bin that has both, else the
// directory of the initdb on PATH if postgres is beside it. Otherwise it
// returns ErrNoBinaries, wrapped with the places it looked.
func Binaries() (string, error) {
	if dir := os.Getenv(EnvBin); dir != "" {
		if err := hasBinaries(dir); err != nil {
			return "", fmt.Errorf("$%s: %w", EnvBin, err)
		}
		return dir, nil
	}
	dirs, _ := filepath.Glob(debianBins) // the pattern is well-formed
	// Highest version first; a directory that is no version sorts last.
	slices.SortFunc(dirs, func(a, b string) int { return slices.Compare(versionOf(b), versionOf(a)) })
	for _, dir := range dirs {
		if hasBinaries(dir) == nil {
			return dir, nil
		}
	}
	if initdb, err := exec.LookPath("initdb"); err == nil {
		dir := filepath.Dir(initdb)
		if hasBinaries(dir) == nil {
			return dir, nil
		}
	}
	return "", fmt.Errorf("%w: $%s is unset, no %s holds both, and PATH has no initdb with postgres beside it",
		ErrNoBinaries, EnvBin, debianBins)
}

// hasBinaries reports whether dir holds executable initdb and postgres files.
func hasBinaries(dir string) error {
	for _, name := range []string{"initdb", "postgres"} {
		p := filepath.Join(dir, name)
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		if st.IsDir() || st.Mode().Perm()&0o111 == 0 {
			return fmt.Errorf("%s is not an executable file", p)
		}
	}
	return nil
}

// versionOf parses the major version of a Debian bin directory,
// /usr/lib/postgresql/15/bin -> [15] (9.6 -> [9 6]); nil if it is no version.
func versionOf(binDir string) []int {
	var v []int
	for _, f := range strings.Split(filepath.Base(filepath.Dir(binDir)), ".") {
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil
		}
		v = append(v, n)
	}
	return v
}
