package kubetest

import "syscall"

// childSysProcAttr puts a child in its own process group (so it and its
// children can be signalled together) and has the kernel kill it when the
// thread that started it exits, i.e. when the test binary dies.
func childSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
