//go:build !linux

package natsproc

import "syscall"

// sysProcAttr has nothing to add where the kernel cannot tie a child's life
// to its parent's: a test binary that dies without Close leaves its servers
// running.
func sysProcAttr() *syscall.SysProcAttr { return nil }
