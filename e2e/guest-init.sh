#!/bin/sh
# /init of an e2e guest. The kernel command line says what this guest is for:
#   e2e.role=conf  run the xenstore conformance probes once, print them, idle
#   e2e.role=work  run the Ballast agent and the memory workload (guest_ctl.py)
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
role=work
for arg in $(cat /proc/cmdline); do
    case $arg in
        e2e.role=*) role=${arg#e2e.role=} ;;
    esac
done
echo "E2E-GUEST up role=$role uptime=$(cut -d' ' -f1 /proc/uptime)"
case $role in
    conf)
        python3 /e2e/xs_conformance.py guest
        echo "E2E-GUEST conformance rc=$? uptime=$(cut -d' ' -f1 /proc/uptime)"
        ;;
    work)
        python3 /e2e/guest_ctl.py
        echo "E2E-GUEST ctl exited rc=$?"
        ;;
esac
while true; do sleep 3600; done
