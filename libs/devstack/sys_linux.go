package devstack

import "syscall"

// sysProcAttr makes services die with the stack's process.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
