package main

import "syscall"

// childAttr makes a child die with the bench, even when the bench is killed.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
