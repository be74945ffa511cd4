#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for tests/test_slurm.py (run as root; idempotent).
#
#   tests/slurm/setup.sh            install (Debian 12: Slurm 22.05) if missing, configure, start, wait until ready
#   tests/slurm/teardown.sh         stop the daemons again
#
# What it sets up:
#   munged      authentication (a key in /etc/munge/munge.key, made once)
#   mariadbd    the accounting database (data in /var/lib/mysql, socket /run/mysqld/mysqld.sock)
#   slurmdbd    accounting daemon on port 6819, writing to MariaDB
#   slurmctld   controller, port 6817        slurmd   the only compute node (this machine), port 6818
#
# Accounting: slurmdbd with a local MariaDB, not `status_command: squeue`. snakemake-executor-plugin-slurm asks
# `sacct` for job states by default, and a real cluster has slurmdbd: with it the test goes through the same status
# path the profile uses in production, and Slurm's own records (`sacct`, with AccountingStoreFlags=job_comment
AccountingStorageTRES=gres/gpu so
# the Comment column holds the plugin's "rule_<rule>_wildcards_<key>") prove which jobs went through sbatch. On
# Debian 12 it costs ~30 MB more packages and a few seconds of MariaDB start; the squeue route (MinJobAge >= 3x the
# first status-check delay, plus JobCompType=jobcomp/filetxt for records) would test a path the profile never uses.
#
# Container notes: no systemd and no cgroups here, so the daemons are started directly, jobs are tracked by
# /proc (ProctrackType=proctrack/linuxproc), TaskPlugin=task/none, and everything runs as root
# (SlurmUser=root, SlurmdUser=root): jobs submitted by root run as root.
#
# The script refuses to touch a Slurm config it did not write (a real cluster's): see MARKER.
# Exit status: 0 ready; 1 failed (the log tail says why); 2 not root; 3 a foreign slurm.conf exists.
set -euo pipefail

MARKER="# written by hardneg tests/slurm/setup.sh"
CLUSTER=hardneg-test
PARTITION=debug
LOGDIR=/var/log/slurm
DB_PASSWORD=hardneg-test-only   # a throwaway database reachable only through the local socket
READY_TIMEOUT=${SLURM_SETUP_TIMEOUT:-90}

log() { echo "[slurm-setup $(date +%H:%M:%S)] $*"; }
die() { echo "[slurm-setup] error: $*" >&2; for f in "$LOGDIR"/*.log /var/log/mysql-test.log; do
    [ -f "$f" ] && { echo "--- tail $f" >&2; tail -n 15 "$f" >&2; }; done; exit 1; }

[ "$(id -u)" -eq 0 ] || { echo "not root: installing and starting Slurm daemons needs root" >&2; exit 2; }
for conf in /etc/slurm/slurm.conf /etc/slurm/slurmdbd.conf /etc/slurm/gres.conf; do
    if [ -f "$conf" ] && ! grep -qF "$MARKER" "$conf"; then
        echo "$conf exists and was not written by this script (a real cluster's?): not touching it" >&2
        exit 3
    fi
done

# --- packages ---------------------------------------------------------------------------------------------------
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
missing=()
for cmd in slurmctld slurmd sbatch sacct sacctmgr slurmdbd munged mariadbd mariadb; do
    command -v "$cmd" >/dev/null || missing+=("$cmd")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${PACKAGES[*]} (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    # postinst scripts try to start services: forbid that (policy-rc.d), this script starts them itself
    policy_created=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy_created=1
    fi
    # other apt users on the machine: wait for the dpkg lock instead of failing at once
    APT=(apt-get -q -o DPkg::Lock::Timeout=300)
    install() { "${APT[@]}" install -y --no-install-recommends "${PACKAGES[@]}" >>/tmp/hardneg-slurm-apt.log 2>&1; }
    : > /tmp/hardneg-slurm-apt.log
    install || { "${APT[@]}" update >>/tmp/hardneg-slurm-apt.log 2>&1 && install; } || {
        [ $policy_created -eq 1 ] && rm -f /usr/sbin/policy-rc.d
        tail -n 20 /tmp/hardneg-slurm-apt.log >&2; die "apt-get install ${PACKAGES[*]} failed"; }
    [ $policy_created -eq 1 ] && rm -f /usr/sbin/policy-rc.d
fi

# --- munge ------------------------------------------------------------------------------------------------------
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge "$LOGDIR"
if [ ! -s /etc/munge/munge.key ]; then
    log "creating the munge key"
    if command -v mungekey >/dev/null; then mungekey --create --force --keyfile=/etc/munge/munge.key
    else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 700 /etc/munge && chmod 400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "starting munged"
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
    munge -n | unmunge >/dev/null || die "munged does not answer"
fi

# --- MariaDB + slurmdbd -----------------------------------------------------------------------------------------
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
if [ ! -d /var/lib/mysql/mysql ]; then
    log "initialising the MariaDB data directory"
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/var/log/mysql-test.log 2>&1 \
        || die "mariadb-install-db failed"
fi
if ! mariadb-admin ping >/dev/null 2>&1; then
    log "starting mariadbd"
    setsid /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql --socket=/run/mysqld/mysqld.sock \
        --bind-address=127.0.0.1 --pid-file=/run/mysqld/mysqld.pid >>/var/log/mysql-test.log 2>&1 < /dev/null &
    for _ in $(seq 150); do mariadb-admin ping >/dev/null 2>&1 && break; sleep 0.2; done
    mariadb-admin ping >/dev/null 2>&1 || die "mariadbd did not start"
fi
mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
            CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" || die "creating the slurm database failed"

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd
write_if_changed() {  # write stdin to $1 (mode $2); print "changed" when the content differs
    local tmp; tmp=$(mktemp)
    cat > "$tmp"
    if [ -f "$1" ] && cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv "$tmp" "$1"; echo changed; fi
    chmod "$2" "$1"
}
dbd_changed=$(write_if_changed /etc/slurm/slurmdbd.conf 600 <<EOF
$MARKER
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$LOGDIR/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=slurm
StoragePass=$DB_PASSWORD
StorageLoc=slurm_acct_db
EOF
)

# --- slurm.conf: one node (this machine, as slurmd -C sees it), one partition -----------------------------------
# Two fake GPUs (gres bound to /dev/tty0-1, character devices every Linux has), so the profile's GPU requests go
# through sbatch for real: Slurm allocates them and sets CUDA_VISIBLE_DEVICES; the stages see no CUDA and use the CPU.
gres_changed=$(write_if_changed /etc/slurm/gres.conf 644 <<EOF
$MARKER
Name=gpu File=/dev/tty[0-1]
EOF
)
node_line=$(slurmd -C | head -n 1)        # NodeName=<host> CPUs=... RealMemory=...
NODE=$(sed -E 's/^NodeName=([^ ]+).*/\1/' <<<"$node_line")
[ -n "$NODE" ] || die "slurmd -C gave no node line"
conf_changed=$(write_if_changed /etc/slurm/slurm.conf 644 <<EOF
$MARKER
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
# no cgroups in a container: track job processes through /proc, no CPU binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
# CPUs are the consumable; memory requests must fit RealMemory but do not block each other
SelectTypeParameters=CR_CPU
ReturnToService=2
# accounting through slurmdbd (sacct); the Comment column keeps the plugin's rule_<rule>_wildcards_<key>
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStoreFlags=job_comment
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none
MinJobAge=300
GresTypes=gpu
SlurmctldTimeout=30
SlurmdTimeout=60
$node_line Gres=gpu:2 NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
)

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
stop() {  # stop the daemon whose pid file is $1
    running "$1" || return 0
    local pid; pid=$(cat "$1"); kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
}

if [ -n "$dbd_changed" ]; then stop /run/slurmdbd.pid; fi
if ! running /run/slurmdbd.pid; then
    log "starting slurmdbd"
    slurmdbd || die "slurmdbd did not start"
fi
for _ in $(seq 100); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.3; done
sacctmgr -n list cluster >/dev/null 2>&1 || die "slurmdbd does not answer sacctmgr"
if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    log "registering cluster $CLUSTER in the accounting database"
    sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster failed"
fi

if [ -n "$conf_changed$gres_changed" ]; then stop /run/slurmd.pid; stop /run/slurmctld.pid; fi
if ! running /run/slurmctld.pid; then
    log "starting slurmctld"
    slurmctld || die "slurmctld did not start"
fi
if ! running /run/slurmd.pid; then
    log "starting slurmd"
    slurmd || die "slurmd did not start"
fi

# --- ready: node idle, accounting answers ----------------------------------------------------------------------
deadline=$((SECONDS + READY_TIMEOUT))
state=""
while [ $SECONDS -lt $deadline ]; do
    state=$(sinfo -h -N -n "$NODE" -o %t 2>/dev/null | head -n 1 || true)
    case "$state" in
        idle|mix|alloc) break ;;
        drain*|down*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
done
case "$state" in idle|mix|alloc) ;; *) die "node $NODE is '${state:-not reported}' after ${READY_TIMEOUT}s" ;; esac
sacct -n -X -S now-1minute >/dev/null || die "sacct does not answer"
log "ready: cluster $CLUSTER, node $NODE ($state), partition $PARTITION; $(sinfo -V)"
