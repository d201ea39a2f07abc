#!/bin/sh
# /init of the e2e dom0: bring up the Xen control plane (modules, xenfs,
# oxenstored, xenconsoled), hand over to the scenario runner, save the
# results on the results disk and power off (QEMU then exits).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/xen-4.17/bin
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu
export HOME=/root PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

mark() { echo "E2E-MARK $* uptime=$(cut -d' ' -f1 /proc/uptime)"; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mkdir -p /run/xen /run/xenstored /var/log/xen/console /var/lib/xen /results
mark dom0-init "clock=$(date +%s)"

xenstored=oxenstored
deadline=0
scenario=full
for arg in $(cat /proc/cmdline); do
    case $arg in
        e2e.xenstored=*) xenstored=${arg#e2e.xenstored=} ;;
        e2e.deadline=*) deadline=${arg#e2e.deadline=} ;;
        e2e.scenario=*) scenario=${arg#e2e.scenario=} ;;
    esac
done

for m in $(cat /lib/modules/load-order); do
    insmod /lib/modules/$m.ko || echo "E2E-WARN insmod $m failed"
done
mount -t xenfs xenfs /proc/xen
mark modules

# oxenstored raises its descriptor limit to fs.nr_open; allow it.
ulimit -n "$(cat /proc/sys/fs/nr_open)" 2>/dev/null || ulimit -n 65536
if [ "$xenstored" = xenstored ]; then
    XENSTORED_ROOTDIR=/run/xenstored xenstored --pid-file /run/xen/xenstored.pid
else
    oxenstored --pid-file /run/xen/xenstored.pid
fi
i=0
until xenstore-read -s / >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -gt 120 ] && { echo "E2E-FATAL xenstored did not come up"; break; }
    sleep 0.5
done
mark xenstored-up "$xenstored"
xen-init-dom0 >/results/xen-init-dom0.log 2>&1 || echo "E2E-WARN xen-init-dom0 failed"
xenconsoled --pid-file /run/xenconsoled.pid --log=guest --log-dir=/var/log/xen/console
mark control-plane-up

python3 /e2e/dom0_run.py --xenstored "$xenstored" --results /results --deadline "$deadline" --scenario "$scenario"
echo "E2E-RUNNER-EXIT rc=$?"

# Save everything the host wants on the results disk (a raw tar stream).
cp /var/log/xen/console/* /results/ 2>/dev/null
xl dmesg >/results/xl-dmesg.log 2>&1
dmesg >/results/dom0-dmesg.log 2>&1
if [ -b /dev/vda ]; then
    (cd /results && tar cf /dev/vda .) && sync && mark results-saved
else
    echo "E2E-WARN no results disk"
fi
mark poweroff
for d in $(xl list 2>/dev/null | awk 'NR>2{print $1}'); do xl destroy "$d" >/dev/null 2>&1; done
poweroff -f
