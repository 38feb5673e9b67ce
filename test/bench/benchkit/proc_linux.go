package benchkit

import "syscall"

// childAttr makes a child die with the bench, even when the bench is killed.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// IsTmpfs reports whether dir is on a tmpfs (memory, no disk).
func IsTmpfs(dir string) bool {
	var s syscall.Statfs_t
	return syscall.Statfs(dir, &s) == nil && s.Type == 0x01021994 // TMPFS_MAGIC
}
