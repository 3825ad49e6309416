#!/bin/sh
# A guest on valed's vhost-user port under Cloud Hypervisor (real KVM only:
# Cloud Hypervisor has no TCG). vale-vm uses this line when the KVM probe
# passes and cloud-hypervisor is on PATH; `vale-vm print cloud-hypervisor …`
# prints it for a given spec. Values here are an example.
#
#   valed listens:  vale-ctl -n vm1 --vhost-user /run/vale/vm1.sock && vale-ctl -a vale0:vm1
#   --memory shared=on      valed must map the guest's memory
#   vhost_mode=client       Cloud Hypervisor connects to valed's socket
#   num_queues              counts RX and TX queues: 2 x queue pairs
#   --serial file=          the kernel console (console=ttyS0)
#   --console socket=       the agent channel: a virtio-console the guest sees
#                           as /dev/hvc0 (QEMU's named port vale.agent does
#                           not exist here); vale-vm exec --agent DIR/agent.sock
#   --kernel                Cloud Hypervisor boots a vmlinux ELF (PVH entry);
#                           a bzImage may need extract-vmlinux first
set -eu
DIR=${DIR:-/tmp/vale-vm-vm1}
mkdir -p "$DIR"
exec cloud-hypervisor \
    --kernel images/out/vmlinuz \
    --initramfs images/out/initramfs.cpio.gz \
    --cmdline 'console=ttyS0 panic=-1 vale.ip=10.0.0.1/24' \
    --cpus boot=2 \
    --memory size=512M,shared=on \
    --net vhost_user=true,socket=/run/vale/vm1.sock,vhost_mode=client,num_queues=4,queue_size=256,mac=52:54:00:56:00:01 \
    --serial file="$DIR/console.log" \
    --console socket="$DIR/agent.sock" \
    --api-socket path="$DIR/api.sock"
