//go:build !linux

package benchkit

import "syscall"

func childAttr() *syscall.SysProcAttr { return nil }

// IsTmpfs reports whether dir is on a tmpfs (memory, no disk); never, off
// Linux.
func IsTmpfs(string) bool { return false }
