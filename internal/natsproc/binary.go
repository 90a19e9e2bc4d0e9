package natsproc

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// serverModule is the module whose main package is nats-server; the version
// is the one the enclosing module's go.mod pins.
const serverModule = "github.com/nats-io/nats-server/v2"

// EnvBinary names the environment variable that, when set, is the path of the
// nats-server executable to run instead of building one.
const EnvBinary = "EDDY_NATS_SERVER"

// built remembers the binary this process found or built, so that a test
// binary builds at most once however many Clusters it starts.
var built struct {
	sync.Mutex
	path string
}

// Binary returns the path of a nats-server executable: $EDDY_NATS_SERVER if
// set, else the version of github.com/nats-io/nats-server/v2 that the
// enclosing module's go.mod pins, built with `go build` in the module root and
// cached as <user cache dir>/eddy/nats-server-<version>. The cached file is
// written under a temporary name and renamed into place, so concurrent test
// binaries never run half a file; they may both build, and the last rename
// wins with an identical binary. Building needs the go command and the module
// cache (or the module proxy); it takes a few seconds, once per machine and
// version. ctx bounds the build.
func Binary(ctx context.Context) (string, error) {
	if p := os.Getenv(EnvBinary); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("$%s: %w", EnvBinary, err)
		}
		return p, nil
	}
	built.Lock()
	defer built.Unlock()
	if built.path != "" {
		return built.path, nil
	}
	root, err := moduleRoot(ctx)
	if err != nil {
		return "", fmt.Errorf("nats-server binary (or set $%s): %w", EnvBinary, err)
	}
	version, err := pinnedVersion(filepath.Join(root, "go.mod"), serverModule)
	if err != nil {
		return "", fmt.Errorf("nats-server binary (or set $%s): %w", EnvBinary, err)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "eddy")
	path := filepath.Join(dir, "nats-server-"+version)
	if _, err := os.Stat(path); err == nil {
		built.path = path
		return path, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("nats-server binary cache: %w", err)
	}
	// go build refuses to overwrite a file that is not a binary, so it writes
	// into a fresh directory beside the cache entry.
	tmp, err := os.MkdirTemp(dir, ".build-*")
	if err != nil {
		return "", fmt.Errorf("nats-server binary cache: %w", err)
	}
	defer os.RemoveAll(tmp)
	out := filepath.Join(tmp, "nats-server")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, serverModule)
	cmd.Dir = root
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build %s@%s in %s: %w\n%s", serverModule, version, root, err, log.Bytes())
	}
	if err := os.Rename(out, path); err != nil {
		return "", fmt.Errorf("nats-server binary cache: %w", err)
	}
	built.path = path
	return path, nil
}

// moduleRoot finds the directory of the enclosing go.mod: walking up from the
// working directory (a test runs in its package directory), else asking the
// go command.
func moduleRoot(ctx context.Context) (string, error) {
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
				return d, nil
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside a Go module: no go.mod above the working directory")
	}
	return filepath.Dir(gomod), nil
}

// pinnedVersion reads the version of module mod from the require lines of
// the go.mod at path.
func pinnedVersion(path, mod string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 0 && fields[0] == "require" {
			fields = fields[1:] // a one-line require
		}
		if len(fields) >= 2 && fields[0] == mod {
			return fields[1], nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return "", fmt.Errorf("%s does not require %s", path, mod)
}
