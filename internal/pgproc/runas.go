package pgproc

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
)

// serverUser names the user that initdb and postgres run as when this
// process is root: PostgreSQL refuses to run as root, and Debian's package
// creates this user.
const serverUser = "postgres"

// runAs returns the credential to run initdb and postgres with: nil when
// this process is not root (they run as it), else that of the user
// postgres, with no supplementary groups.
func runAs() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup(serverUser)
	if err != nil {
		return nil, fmt.Errorf("running as root, and PostgreSQL refuses to: need user %q to run it as: %w", serverUser, err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %s: uid %q: %w", serverUser, u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %s: gid %q: %w", serverUser, u.Gid, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// handOver gives dir, freshly made and empty, to cred's user and checks that
// the user can reach it: that it can search every directory above. It
// changes no directory above dir; one that blocks the way is an error.
func handOver(dir string, cred *syscall.Credential) error {
	if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
		return err
	}
	for d := filepath.Dir(dir); ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return err
		}
		if !searchable(st, cred) {
			own := st.Sys().(*syscall.Stat_t)
			return fmt.Errorf("user %s (uid %d) cannot reach %s: %s is mode %v, owned by uid %d gid %d; use a Dir it can search",
				serverUser, cred.Uid, dir, d, st.Mode(), own.Uid, own.Gid)
		}
		if filepath.Dir(d) == d {
			return nil
		}
	}
}

// searchable reports whether a process with exactly cred's uid and gid (no
// supplementary groups, as runAs sets) may search the directory st, by the
// permission bits the kernel applies: the owner's if it owns it, else the
// group's if its group, else the others'.
func searchable(st os.FileInfo, cred *syscall.Credential) bool {
	sys := st.Sys().(*syscall.Stat_t)
	perm := st.Mode().Perm()
	switch {
	case sys.Uid == cred.Uid:
		return perm&0o100 != 0
	case sys.Gid == cred.Gid:
		return perm&0o010 != 0
	default:
		return perm&0o001 != 0
	}
}
