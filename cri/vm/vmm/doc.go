// Package vmm is `evelet vmm <container-dir>`, the detached supervisor of
// one VM: it runs QEMU in the pod's netns and cgroup, pumps the serial
// console into the container's log, serves the console socket and answers
// the guest's DHCP, and records QEMU's exit. It owns the files of the
// container directory that it and the VM backend (cri/vm, which starts
// it) exchange, so both read them the same way. It must not import cri/vm.
package vmm
