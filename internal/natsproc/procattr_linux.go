package natsproc

import "syscall"

// sysProcAttr makes the kernel SIGKILL a server when the process that started
// it dies, so that a test binary that panics or times out leaves no
// nats-server behind holding its ports. (Linux ties this to the starting
// thread; the Go runtime ends a thread only when a goroutine locked to it
// exits, and this package starts servers from no such goroutine.)
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
