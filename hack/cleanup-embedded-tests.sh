#!/usr/bin/env bash
# Removes what an interrupted run of the paddock-embedded root tests may leave behind:
# processes in test cgroups, mounts under /var/tmp/paddock-test*, test bridges (pdktbr*),
# loop devices backed by sandbox disk images there, test veths (pdt*, pdkte*, pdkto*), netns pdktnet* and pdkto*, nft tables paddock_test* (inet and
# bridge), cgroups paddock-test*. Touches nothing else.
set -uo pipefail
mem_own=$(awk -F: '$2=="memory"{print $3}' /proc/self/cgroup)
for ctrl in pids cpu cpuacct memory freezer; do
  for d in /sys/fs/cgroup/$ctrl${mem_own}/paddock-test*/*/; do
    [ -d "$d" ] || continue
    [ "$ctrl" = freezer ] && echo THAWED > "$d/freezer.state" 2>/dev/null
    for p in $(cat "$d/cgroup.procs" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
  done
done
sleep 0.5
for ctrl in $(ls /sys/fs/cgroup | grep -v '^unified$'); do
  for d in /sys/fs/cgroup/$ctrl${mem_own}/paddock-test*/*/ /sys/fs/cgroup/$ctrl${mem_own}/paddock-test*/; do
    [ -d "$d" ] && rmdir "$d" 2>/dev/null
  done
done
awk '$5 ~ "^/var/tmp/paddock-test" {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
  umount -l "$m" 2>/dev/null
done
# Sandbox disk images' loop devices clear themselves on the last unmount; a device whose
# mount was never made (a crash between losetup and mount) does not.
losetup -nO NAME,BACK-FILE 2>/dev/null | awk '$2 ~ "^/var/tmp/paddock-test" {print $1}' |
  while read -r dev; do
    losetup -d "$dev" 2>/dev/null
  done
for l in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E '^(pdktbr[0-9]+|pdkte[0-9]+a|pdkto[0-9]+a|pdt[0-9a-f]{2}[0-9a-f]{8})$'); do
  ip link del "$l" 2>/dev/null
done
nft list tables 2>/dev/null | awk '($2=="inet" || $2=="bridge") && $3 ~ /^paddock_test/ {print $2, $3}' |
  while read -r family t; do
    nft delete table "$family" "$t"
  done
for n in $(ip netns list 2>/dev/null | awk '$1 ~ /^(pdktnet|pdkto)[0-9]+$/ {print $1}'); do
  ip netns pids "$n" 2>/dev/null | xargs -r kill -9
  ip netns del "$n"
done
rm -rf /var/tmp/paddock-test[A-Za-z0-9]* 2>/dev/null
exit 0
