//go:build !linux

package pgproc

import "syscall"

// sysProcAttr runs initdb or postgres as cred (nil: as this process) in a
// process group of its own: a terminal's Ctrl-C does not reach it, and
// initdb can be killed with the bootstrap postgres it runs. Outside Linux the kernel cannot tie a child's life to its parent's: a test
// binary that dies without Close leaves its server running.
func sysProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Credential: cred}
}
