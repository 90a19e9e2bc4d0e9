package pgproc

import "syscall"

// sysProcAttr runs initdb or postgres as cred (nil: as this process) in a
// process group of its own: a terminal's Ctrl-C does not reach it, and
// initdb can be killed with the bootstrap postgres it runs. (The
// postmaster's children leave its group: each calls setsid.) The kernel
// SIGKILLs the postmaster when the process that started it dies, so that a
// test binary that panics or times out leaves no server holding its port;
// the backends then exit on noticing the postmaster gone. (The directory
// stays, and a 56-byte System V shared memory segment.) (Linux
// ties this to the starting thread; the Go runtime ends a thread only when a
// goroutine locked to it exits, and this package starts servers from no
// such goroutine.)
func sysProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: cred}
}
