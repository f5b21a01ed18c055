// Package vm is the CRI backend for VM pods: a pod whose RuntimeClass
// handler is "eve-vm" runs as one QEMU guest. The container's image is a
// "containerDisk" pulled through containerd's image service (a qcow2 or raw
// file under /disk/, or /disk/vmlinuz + /disk/initrd for direct kernel
// boot); each container boots from its own qcow2 overlay. QEMU runs under a
// detached per-VM supervisor (`evelet vmm`, package cri/vm/vmm) that outlives the
// shim and the agent; everything the backend knows lives in files under its
// state directory, so a restarted shim re-adopts running VMs. docs/vm-pods.md
// is the user-facing description.
package vm
