#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the `slurm` executor's tests: as root,
# installs Debian's slurm-wlm and munge (apt-get), writes a localhost slurm.conf (CPUs and
# memory from `slurmd -C`), starts munged, slurmctld and slurmd without systemd, and waits
# until `srun hostname` works. Idempotent: a cluster that already answers is left as it is.
# Exit 0 when `srun hostname` works, non-zero (with the reason) otherwise.
set -euo pipefail

log() { echo "slurm-local: $*" >&2; }
works() { timeout 20 srun -N1 -n1 -t 1 hostname >/dev/null 2>&1; }

if command -v srun >/dev/null && works; then
  log "cluster already up"; exit 0
fi
if [ "$(id -u)" != 0 ]; then
  log "needs root (installs packages, starts daemons)"; exit 1
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  log "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq slurm-wlm munge >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq slurm-wlm munge >/dev/null; }
fi

CONF_DIR=/etc/slurm
mkdir -p "$CONF_DIR" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge \
  /var/lib/munge /var/log/munge /etc/munge
chown -R slurm:slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm 2>/dev/null || true

# munge: a key, then the daemon (as the munge user, which the package creates)
if [ ! -s /etc/munge/munge.key ]; then
  (command -v mungekey >/dev/null && mungekey --create --keyfile=/etc/munge/munge.key) \
    || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- munged --force
  sleep 1
fi

HOST=$(hostname -s)
# `slurmd -C` prints this node's NodeName line (CPUs, sockets, cores, threads, memory)
NODE_LINE=$(slurmd -C | head -1 | sed "s/^NodeName=[^ ]*/NodeName=$HOST/")
MEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$NODE_LINE")
NODE_LINE=$(sed "s/RealMemory=[0-9]*/RealMemory=$((MEM * 9 / 10))/" <<<"$NODE_LINE")
cat > "$CONF_DIR/slurm.conf" <<CONF
# written by scripts/slurm-local.sh: a one-node cluster on localhost
ClusterName=harness-local
SlurmctldHost=$HOST
SlurmUser=slurm
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
KillWait=30
MinJobAge=600
JobRequeue=1
$NODE_LINE State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
# the Debian packages also read /etc/slurm-llnl on older releases
[ -d /etc/slurm-llnl ] && cp "$CONF_DIR/slurm.conf" /etc/slurm-llnl/slurm.conf || true
rm -f "$CONF_DIR/cgroup.conf"  # proctrack/linuxproc, task/none: no cgroups needed

pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 1 30); do
  if works; then log "cluster up: $(sinfo -h -o '%P %D %c CPUs %m MB' | head -1)"; exit 0; fi
  scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
  sleep 2
done
log "srun hostname does not work; see /var/log/slurm/slurmctld.log and slurmd.log"
exit 1
