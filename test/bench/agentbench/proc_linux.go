package main

import "syscall"

// childAttr makes a child die with the bench, even when the bench is killed.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// isTmpfs reports whether dir is on a tmpfs (memory, no disk).
func isTmpfs(dir string) bool {
	var s syscall.Statfs_t
	return syscall.Statfs(dir, &s) == nil && s.Type == 0x01021994 // TMPFS_MAGIC
}
