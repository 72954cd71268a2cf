//go:build unix && !linux

package kubetest

import "syscall"

// childSysProcAttr puts a child in its own process group so it and its
// children can be signalled together. Outside Linux there is no parent-death
// signal: a test binary killed with SIGKILL leaves its cluster running.
func childSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
