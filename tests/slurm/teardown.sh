#!/usr/bin/env bash
# Stop the daemons tests/slurm/setup.sh started (slurmd, slurmctld, slurmdbd, mariadbd, munged), newest first.
# Configs, the munge key and the accounting database stay, so the next setup.sh only starts daemons again.
set -uo pipefail

[ "$(id -u)" -eq 0 ] || { echo "not root" >&2; exit 2; }
if [ -f /etc/slurm/slurm.conf ] && ! grep -qF "# written by hardneg tests/slurm/setup.sh" /etc/slurm/slurm.conf; then
    echo "/etc/slurm/slurm.conf was not written by tests/slurm/setup.sh: leaving its daemons alone" >&2
    exit 3
fi

stop() {  # $1 pid file, $2 name
    [ -f "$1" ] || return 0
    local pid; pid=$(cat "$1")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && { echo "$2 ($pid) still running; SIGKILL"; kill -9 "$pid"; }
        echo "stopped $2 ($pid)"
    fi
    rm -f "$1"
}

stop /run/slurmd.pid slurmd
stop /run/slurmctld.pid slurmctld
stop /run/slurmdbd.pid slurmdbd
stop /run/mysqld/mysqld.pid mariadbd
stop /run/munge/munged.pid munged
exit 0
