#!/bin/sh
# netplane test VM, stage 2: runs in the guest after switch_root into the overlay of the host's root.
# The usual filesystems, the guest kernel's modules at /lib/modules, loopback up, IPVS loaded, then the
# job (written by tests/vm/harness.py) with its output and exit status left in the results share.
R=/.netplane-vm
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/.netplane-tmp
export NETPLANE_VM_RESULTS=$R NETPLANE_IN_VM=1
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs -o mode=755 tmpfs /run
# Temporary files on a tmpfs of their own, not over /tmp: the checkout under test may live in the
# host's /tmp (a CI clone), and the guest must see it there.
mkdir -p /.netplane-tmp
mount -t tmpfs -o mode=1777 tmpfs /.netplane-tmp
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
. $R/env
mkdir -p "/lib/modules/$NETPLANE_VM_VERSION"
mount --bind "$NETPLANE_VM_MODULES" "/lib/modules/$NETPLANE_VM_VERSION"
hostname netplane-vm
ip link set lo up
# br_netfilter is not autoloaded: the topology needs net.bridge.bridge-nf-call-iptables (MACHINE-NOTES).
modprobe -a ip_vs ip_vs_rr nf_conntrack br_netfilter
sh $R/job.sh > $R/output.log 2>&1
echo $? > $R/rc
sync
echo o > /proc/sysrq-trigger
sleep 30
