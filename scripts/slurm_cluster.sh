#!/usr/bin/env bash
# A single-node Slurm cluster on loopback, for saerun's Slurm tests (tests/test_slurm.py) and
# for trying `saerun SPEC --launcher slurm` on one machine. Needs root; no systemd.
#
#   bash scripts/slurm_cluster.sh install   apt-get the packages if missing (ok to fail)
#   bash scripts/slurm_cluster.sh start     start munged, mariadbd, slurmdbd, slurmctld, slurmd
#   bash scripts/slurm_cluster.sh stop      cancel every job, stop every daemon `start` started
#   bash scripts/slurm_cluster.sh status    exit 0 when the cluster answers, 1 otherwise
#   bash scripts/slurm_cluster.sh env       the export line Slurm's commands need
#
# Everything lives in $SAERUN_SLURM_DIR (default /tmp/saerun-slurm): the configuration (so
# /etc/slurm is never touched: commands find it through SLURM_CONF), state, logs, pid files and
# the accounting database. Slurm's daemons listen on 127.0.0.1 only (ports 6817-6819);
# munged and mariadbd listen on Unix sockets only (mariadbd with --skip-networking).
# Accounting through slurmdbd is not optional: without it `sacct` knows nothing, and a job that
# was killed or cancelled after leaving the queue could never be told apart from a lost one.
# Derived from ../shared/recipes/slurm-single-node.sh (about 50 s of apt, 8 s to start).
set -euo pipefail

D=${SAERUN_SLURM_DIR:-/tmp/saerun-slurm}
export SLURM_CONF=$D/etc/slurm.conf
PACKAGES=(slurm-wlm slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
MYSQL_SOCKET=/run/mysqld/mysqld.sock  # where slurmdbd's MariaDB client looks (no option for it)
# Pid files, in stop order (the reverse of start); munged and mariadbd write theirs in folders
# their own users own.
PIDFILES=(slurmd.pid slurmctld.pid slurmdbd.pid mysql/mysqld.pid munge/munged.pid)

installed() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v slurmdbd >/dev/null && command -v munged >/dev/null \
        && command -v mariadbd >/dev/null && command -v sbatch >/dev/null
}

wait_for() {  # wait_for SECONDS COMMAND...: poll every 0.2 s
    local deadline=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.2
    done
}

cmd_install() {
    installed && return 0
    [ "$(id -u)" = 0 ] || { echo "slurm_cluster: installing needs root" >&2; return 1; }
    command -v apt-get >/dev/null || { echo "slurm_cluster: no apt-get here" >&2; return 1; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${PACKAGES[@]}" >/dev/null
}

write_config() {
    local host mem_mb cpus
    host=$(hostname)
    cpus=$(nproc)
    # Most of the machine's memory, so slurmd never drains the node for "low RealMemory";
    # a job asks for its share by default (DefMemPerCPU), so jobs can run side by side.
    mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
    mkdir -p "$D"/{etc,state,spool,munge,mysql,log}
    cat >"$D/etc/slurm.conf" <<CONF
ClusterName=saerun-ci
SlurmctldHost=$host(127.0.0.1)
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
AuthType=auth/munge
# cred_expire also holds a requeued job pending (BeginTime) that long before it may start again:
# 120 s by default, which under a one-minute time limit spent most of the wall time waiting.
AuthInfo=socket=$D/munge/munge.socket.2,cred_expire=15
SlurmUser=root
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePass=$D/munge/munge.socket.2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem_mb / cpus))
ReturnToService=2
MpiDefault=none
# A cancelled job gets SIGTERM, then SIGKILL after KillWait seconds (submitit ignores SIGTERM).
KillWait=5
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    cat >"$D/etc/slurmdbd.conf" <<CONF
AuthType=auth/munge
AuthInfo=socket=$D/munge/munge.socket.2
DbdHost=localhost
DbdAddr=127.0.0.1
CommunicationParameters=NoInAddrAny
SlurmUser=root
LogFile=$D/log/slurmdbd.log
PidFile=$D/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=slurmpw
CONF
    chmod 600 "$D/etc/slurmdbd.conf"
}

fail() {  # a half-started cluster is stopped again: nothing is left running
    echo "slurm_cluster: $1" >&2
    cmd_stop >/dev/null 2>&1 || true
    exit 1
}

cmd_status() {
    [ -f "$SLURM_CONF" ] && timeout 10 sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mix|alloc'
}

cmd_start() {
    [ "$(id -u)" = 0 ] || { echo "slurm_cluster: starting the daemons needs root" >&2; exit 1; }
    if cmd_status; then
        echo "slurm_cluster: already running ($SLURM_CONF)"
        return 0
    fi
    installed || cmd_install
    cmd_stop >/dev/null 2>&1 || true  # what a half-dead earlier start left (by its pid files)
    write_config

    # munged: its own socket, pid and seed under $D, owned by the munge user as it insists.
    [ -f /etc/munge/munge.key ] || { mungekey -c; chown munge:munge /etc/munge/munge.key; }
    chown munge:munge "$D/munge"
    chmod 755 "$D/munge"
    runuser -u munge -- /usr/sbin/munged --socket="$D/munge/munge.socket.2" \
        --pid-file="$D/munge/munged.pid" --log-file="$D/munge/munged.log" \
        --seed-file="$D/munge/munged.seed" </dev/null >/dev/null 2>&1

    # MariaDB for slurmdbd: no TCP listener at all, one Unix socket.
    mkdir -p /run/mysqld
    chown mysql:mysql /run/mysqld "$D/mysql"
    [ -d "$D/mysql/mysql" ] || mariadb-install-db --user=mysql --datadir="$D/mysql" \
        --skip-test-db >"$D/log/mariadb-install.log" 2>&1
    setsid mariadbd --user=mysql --datadir="$D/mysql" --skip-networking \
        --socket="$MYSQL_SOCKET" --pid-file="$D/mysql/mysqld.pid" \
        >"$D/log/mysqld.log" 2>&1 </dev/null &
    wait_for 60 mariadb --socket="$MYSQL_SOCKET" -uroot -e 'select 1' \
        || fail "mariadbd did not start, see $D/log/mysqld.log"
    mariadb --socket="$MYSQL_SOCKET" -uroot -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"

    # No daemon keeps the caller's stdout or stderr: a caller reading them to the end (as the
    # tests do) would otherwise wait for the daemons to exit. Their logs are under $D/log.
    setsid /usr/sbin/slurmdbd </dev/null >/dev/null 2>&1
    wait_for 60 sh -c "ss -ltn | grep -q '127.0.0.1:6819 '" \
        || fail "slurmdbd did not start, see $D/log/slurmdbd.log"
    timeout 30 sacctmgr -i add cluster saerun-ci >/dev/null 2>&1 || true
    setsid /usr/sbin/slurmctld </dev/null >/dev/null 2>&1
    setsid /usr/sbin/slurmd </dev/null >/dev/null 2>&1
    wait_for 60 cmd_status \
        || fail "the node did not come up, see $D/log/"
    echo "slurm_cluster: up; export SLURM_CONF=$SLURM_CONF"
}

cmd_stop() {
    if [ -f "$SLURM_CONF" ] && [ -f "$D/slurmctld.pid" ]; then
        # Jobs first, so no slurmstepd or job process outlives the cluster.
        timeout 10 scancel --full --partition=debug >/dev/null 2>&1 || true
        wait_for 15 sh -c "[ -z \"\$(squeue -h -t R,CG 2>/dev/null)\" ]" || true
    fi
    local file pid
    for file in "${PIDFILES[@]}"; do
        [ -f "$D/$file" ] || continue
        pid=$(cat "$D/$file")
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid"
            wait_for 20 sh -c "! kill -0 $pid" || kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$D/$file"
    done
    echo "slurm_cluster: stopped"
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$SLURM_CONF" ;;
    *) echo "usage: $0 install|start|stop|status|env" >&2; exit 2 ;;
esac
