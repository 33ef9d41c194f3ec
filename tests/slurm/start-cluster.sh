#!/usr/bin/env bash
# Start a real one-node SLURM cluster on this machine, for the tests in tests/slurm/.
#
#   sudo bash tests/slurm/start-cluster.sh        # as root; prints `export SLURM_CONF=...`
#   bash tests/slurm/stop-cluster.sh              # stops exactly what this started
#
# What it does:
#   - installs Debian's slurmctld, slurmd, slurm-client and munge if they are missing
#     (tests/provision.sh slurm; Debian 12 has slurm-wlm 22.05.8);
#   - writes munge's key, slurm.conf, all state, spool, logs and pid files into ONE folder,
#     $MOE_SLURM_DIR (default /tmp/moe-harness-slurm); nothing is written to /etc:
#     every SLURM client honours the SLURM_CONF variable, so callers export
#     SLURM_CONF=$MOE_SLURM_DIR/etc/slurm.conf (the fixture in conftest.py does; without it,
#     sbatch looks for /etc/slurm/slurm.conf, then DNS SRV records, and fails with
#     "Could not establish a configuration source"). Jobs inherit it (sbatch --export=ALL);
#   - starts munged, slurmctld and slurmd as root in the foreground mode of each daemon,
#     detached with setsid, and records "name pid program" lines in $MOE_SLURM_DIR/run/pids;
#   - waits (up to $MOE_SLURM_START_TIMEOUT s, default 60) until sinfo shows the node idle.
#   Once the packages are there, a start takes about 1 s, 3 s with accounting (10 s in a new
#   folder), on 2 cores.
#   State is kept across stop/start (job ids go on, as sacct's records need); delete the
#   folder, stopped, for a clean slate.
#
# It is idempotent: while the recorded daemons are alive and the node answers, a second call
# prints the SLURM_CONF line and exits 0; two calls at once are serialised by a lock. Leftover
# daemons of a half-dead earlier start are stopped (through stop-cluster.sh, i.e. by recorded
# pid) before a fresh start, and a failed start stops what it started.
#
# Accounting (sacct), MOE_SLURM_ACCOUNTING:
#   1    also start a private MariaDB (datadir in $MOE_SLURM_DIR, bound to 127.0.0.1 and a
#        unix socket in $MOE_SLURM_DIR) and slurmdbd, so that `sacct` works; installs
#        Debian's mariadb-server and slurmdbd if missing. Fails if they don't come up.
#   0    no accounting: AccountingStorageType=accounting_storage/none, `sacct` fails
#        ("Slurm accounting storage is disabled").
#   auto (default) try as with 1; if the database side does not come up within
#        $MOE_SLURM_DBD_TIMEOUT s (default 60), stop it and go on without accounting.
#   Whether accounting is on is written to $MOE_SLURM_DIR/run/accounting (1 or 0).
#   Measured here: mariadb-install-db + MariaDB + slurmdbd (creating its tables) + `sacctmgr
#   add cluster` take about 10 s in a new folder, 1-2 s later; it has not failed in about 20
#   starts. The one trap:
#   for auth/munge, clients reach slurmdbd through the munge socket named by
#   AccountingStoragePass, not AuthInfo (without it sacct tries /run/munge/munge.socket.2).
#   Why it matters: submitit learns job states only from sacct. Without it, job.done() is
#   true only once the job's result file exists, so a job that dies without writing one
#   (killed, node lost) leaves job.result() waiting for ever, with a "Bypassing sacct error"
#   warning per poll.
#
# Timing settings for tests: KillWait=2 (SIGKILL still came about 5 s after SIGTERM here),
# cred_expire=10 in AuthInfo (Slurm's default, 120 s, is also how long a requeued job waits
# before it may start again), sched_interval=1 and bf_interval=1 (a job whose begin time has
# passed starts within a second or two, not at the next 60 s scheduling pass).
#
# Other knobs: MOE_SLURM_CTLD_PORT (6817), MOE_SLURM_D_PORT (6818), MOE_SLURM_DBD_PORT (6819),
# MOE_SLURM_DB_PORT (3307), MOE_SLURM_PARTITION (debug), MOE_SLURM_CLUSTER (moeharness),
# MOE_SLURM_CRED_EXPIRE (10), MOE_SLURM_PROCTRACK (linuxproc), MOE_SLURM_DEBUG (slurmd's log
# level, info), MOE_SLURM_START_TIMEOUT (60), MOE_SLURM_DBD_TIMEOUT (60). A second cluster
# on the same machine needs its own MOE_SLURM_DIR and ports.
set -euo pipefail

DIR=${MOE_SLURM_DIR:-/tmp/moe-harness-slurm}
ACCOUNTING=${MOE_SLURM_ACCOUNTING:-auto}
START_TIMEOUT=${MOE_SLURM_START_TIMEOUT:-60}
DBD_TIMEOUT=${MOE_SLURM_DBD_TIMEOUT:-60}
CTLD_PORT=${MOE_SLURM_CTLD_PORT:-6817}
D_PORT=${MOE_SLURM_D_PORT:-6818}
DBD_PORT=${MOE_SLURM_DBD_PORT:-6819}
DB_PORT=${MOE_SLURM_DB_PORT:-3307}
PARTITION=${MOE_SLURM_PARTITION:-debug}
CLUSTER=${MOE_SLURM_CLUSTER:-moeharness}
CRED_EXPIRE=${MOE_SLURM_CRED_EXPIRE:-10}
PROCTRACK=${MOE_SLURM_PROCTRACK:-linuxproc}
SLURMD_DEBUG=${MOE_SLURM_DEBUG:-info}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

CONF=$DIR/etc/slurm.conf
PIDS=$DIR/run/pids
export SLURM_CONF=$CONF

log() { echo "start-cluster: $*" >&2; }
die() {
    echo "start-cluster: ERROR: $*" >&2
    if [[ ${STARTED_ANY:-0} == 1 ]]; then
        echo "start-cluster: stopping what this run started" >&2
        bash "$HERE/stop-cluster.sh" >&2 || true
    fi
    exit 1
}

case $ACCOUNTING in 0|1|auto) ;; *) die "MOE_SLURM_ACCOUNTING must be 0, 1 or auto, not '$ACCOUNTING'";; esac
[[ $(id -u) == 0 ]] || die "must run as root (the daemons run as root and jobs may run as any user)"
[[ $DIR == /* ]] || die "MOE_SLURM_DIR must be an absolute path, not '$DIR'"

# ---------------------------------------------------------------- already running?
# one start at a time (two test sessions starting together): the second waits, then finds
# the cluster running
mkdir -p "$DIR/run"
exec 9> "$DIR/run/start.lock"
flock -w 900 9 || die "another start-cluster.sh holds $DIR/run/start.lock for 15 minutes"

# alive PID EXE: the pid is alive and runs EXE, the program we started (guards against pid reuse)
alive() { [[ $(readlink "/proc/$1/exe" 2>/dev/null) == "$2" ]]; }

all_alive() {
    [[ -s $PIDS ]] || return 1
    local name pid exe
    while read -r name pid exe; do
        alive "$pid" "$exe" || return 1
    done < "$PIDS"
}

node_state() { sinfo -h -N -p "$PARTITION" -o %T 2>/dev/null | head -n1; }

print_env() {
    echo "export SLURM_CONF=$CONF"
}

if all_alive; then
    state=$(node_state || true)
    if [[ $state == idle* || $state == mix* || $state == alloc* ]]; then
        log "already running (node $state, accounting=$(cat "$DIR/run/accounting" 2>/dev/null || echo ?))"
        print_env
        exit 0
    fi
fi
if [[ -s $PIDS ]]; then
    log "an earlier start is half alive or unresponsive: stopping its recorded daemons first"
    bash "$HERE/stop-cluster.sh" || true
fi

T0=$(date +%s.%N)

# ---------------------------------------------------------------- packages
# The packages' postinst scripts may try to start Debian's own services; those use /etc/slurm
# and /run/munge, not our folder or ports... except the default ports: we stop them below if
# they did start.
bash "$HERE/../provision.sh" slurm || die "cannot install the SLURM packages"

# ---------------------------------------------------------------- layout and config
mkdir -p "$DIR"/{etc,run,log,state,spool,munge,db}
chmod 755 "$DIR"
chmod 700 "$DIR/munge"
: > "$PIDS"
STARTED_ANY=1

HOST=$(hostname -s)
NCPU=$(nproc)
MEM_TOTAL=$(free -m | awk '/^Mem:/ {print $2}')
# leave 10% (at least 512 MiB) to the OS and the daemons
MARGIN=$(( MEM_TOTAL / 10 > 512 ? MEM_TOTAL / 10 : 512 ))
REAL_MEM=$(( MEM_TOTAL - MARGIN ))
(( REAL_MEM > 256 )) || die "too little memory for a node: free -m says ${MEM_TOTAL} MiB"
DEF_MEM_PER_CPU=$(( REAL_MEM / NCPU ))

# Accepted by slurmctld >= 20.02: a preempted job gets the --signal user signal (submitit's
# checkpoint signal) before SIGTERM, as on most production clusters.
CTLD_PARAMS=""
if grep -aq preempt_send_user_signal "$(command -v slurmctld)"; then
    CTLD_PARAMS="SlurmctldParameters=preempt_send_user_signal"
fi

write_conf() {  # write_conf ACCOUNTING(0|1)
    local acct_lines
    if [[ $1 == 1 ]]; then
        acct_lines="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# for auth/munge, this names the munge socket used to talk to slurmdbd (clients would use
# /run/munge/munge.socket.2 otherwise, whatever AuthInfo says)
AccountingStoragePass=$DIR/munge/munge.socket
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
    else
        acct_lines="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
    fi
    cat > "$CONF.tmp" <<EOF
# Written by tests/slurm/start-cluster.sh for a one-node test cluster. Do not edit: rewritten
# on every start.
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$D_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire (default 120 s) is also how long a requeued job waits before it may start again
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=$CRED_EXPIRE
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/slurmd-%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=$SLURMD_DEBUG
$CTLD_PARAMS
SlurmdParameters=config_overrides
ProctrackType=proctrack/$PROCTRACK
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEF_MEM_PER_CPU
JobRequeue=1
ReturnToService=2
# quick turnaround for tests
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=2
MinJobAge=60
Waittime=0
MessageTimeout=10
SchedulerParameters=sched_min_interval=0,batch_sched_delay=0,sched_interval=1,bf_interval=1
$acct_lines
JobCompType=jobcomp/none
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$NCPU RealMemory=$REAL_MEM State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
}

# ---------------------------------------------------------------- daemons
# start NAME CMD...: run a daemon in its foreground mode, detached, and record its pid and
# program; returns non-zero if it exits at once
start() {
    local name=$1 exe; shift
    exe=$(readlink -f "$(command -v "$1")") || die "$1 not found"
    setsid "$@" > "$DIR/log/$name.out" 2>&1 < /dev/null 9>&- &
    local pid=$!
    echo "$name $pid $exe" >> "$PIDS"
    sleep 0.2
    alive "$pid" "$exe" && return 0
    tail -n 20 "$DIR/log/$name.out" >&2 || true
    log "$name exited at once (log: $DIR/log/$name.out)"
    return 1
}

# wait_for WHAT TIMEOUT CMD...: retry CMD every 0.25 s until it succeeds
wait_for() {
    local what=$1 timeout=$2; shift 2
    local deadline=$(( $(date +%s) + timeout ))
    until "$@" >/dev/null 2>&1; do
        (( $(date +%s) < deadline )) || return 1
        sleep 0.25
    done
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

for p in "$CTLD_PORT" "$D_PORT"; do
    port_free "$p" || die "port $p is already in use on 127.0.0.1 (another slurm? Debian's own service?); set MOE_SLURM_CTLD_PORT/MOE_SLURM_D_PORT"
done

# munge: our own key and socket, never /etc/munge or /run/munge
if [[ ! -s $DIR/munge/munge.key ]]; then
    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
fi
chmod 400 "$DIR/munge/munge.key"
rm -f "$DIR/munge/munge.socket" "$DIR/munge/munge.socket.lock"
start munged munged --foreground --force \
    --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" \
    --seed-file="$DIR/munge/munged.seed" || die "munged did not start"
wait_for munge 10 bash -c "munge -n -S '$DIR/munge/munge.socket' | unmunge -S '$DIR/munge/munge.socket'" \
    || die "munged did not answer within 10 s (log: $DIR/log/munged.log)"

# stop_recorded NAME: end a daemon that this run recorded, and forget it (used when the optional
# accounting side fails half way)
stop_recorded() {
    local name pid exe
    while read -r name pid exe; do
        [[ $name == "$1" ]] || continue
        if alive "$pid" "$exe"; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 40); do alive "$pid" "$exe" || break; sleep 0.25; done
            alive "$pid" "$exe" && kill -KILL "$pid" 2>/dev/null
        fi
    done < "$PIDS"
    grep -v "^$1 " "$PIDS" > "$PIDS.tmp" || true
    mv "$PIDS.tmp" "$PIDS"
}

# start_accounting: MariaDB (private datadir, 127.0.0.1 and a socket in $DIR only) and
# slurmdbd; returns non-zero (after stopping what it started) if they are not up in time
start_accounting() {
    local t0 db=$DIR/db sock=$DIR/db/mysqld.sock pass
    t0=$(date +%s)
    bash "$HERE/../provision.sh" slurm-accounting || return 1
    local p
    for p in "$DB_PORT" "$DBD_PORT"; do
        port_free "$p" || { log "port $p is in use; set MOE_SLURM_DB_PORT/MOE_SLURM_DBD_PORT"; return 1; }
    done
    mkdir -p "$db"
    if [[ ! -d $db/data/mysql ]]; then
        log "initialising MariaDB in $db/data"
        rm -rf "$db/data"
        mariadb-install-db --no-defaults --datadir="$db/data" --user=root --skip-test-db \
            --auth-root-authentication-method=socket > "$DIR/log/mariadb-install.out" 2>&1 \
            || { log "mariadb-install-db failed (log: $DIR/log/mariadb-install.out)"; return 1; }
    fi
    start mariadbd mariadbd --no-defaults --datadir="$db/data" --socket="$sock" \
        --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve --user=root \
        --pid-file="$DIR/run/mariadbd.pid" --log-error="$DIR/log/mariadbd.log" \
        --innodb-buffer-pool-size=64M --innodb-use-native-aio=0 --innodb-lock-wait-timeout=900 --skip-log-bin || return 1
    if ! wait_for mariadb "$DBD_TIMEOUT" mariadb --no-defaults -S "$sock" -u root -e 'select 1'; then
        log "MariaDB did not answer within $DBD_TIMEOUT s (log: $DIR/log/mariadbd.log)"
        stop_recorded mariadbd; return 1
    fi
    [[ -s $db/slurm.pass ]] || (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$db/slurm.pass")
    pass=$(cat "$db/slurm.pass")
    mariadb --no-defaults -S "$sock" -u root -e "
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
        CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" \
        || { log "could not create the slurm database user"; stop_recorded mariadbd; return 1; }
    (umask 077; cat > "$DIR/etc/slurmdbd.conf" <<EOF
# Written by tests/slurm/start-cluster.sh; read by slurmdbd from SLURM_CONF's folder.
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
DbdAddr=127.0.0.1
DbdHost=$HOST
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$pass
StorageLoc=slurm_acct_db
EOF
    )
    write_conf 1   # sacctmgr reads AccountingStorageHost/Port from slurm.conf
    start slurmdbd slurmdbd -D || { stop_recorded mariadbd; return 1; }
    local left=$(( DBD_TIMEOUT - ($(date +%s) - t0) ))
    (( left > 5 )) || left=5
    if ! wait_for slurmdbd "$left" sacctmgr -n -i list cluster; then
        log "slurmdbd did not answer within $left s (log: $DIR/log/slurmdbd.log)"
        tail -n 10 "$DIR/log/slurmdbd.log" >&2 || true
        stop_recorded slurmdbd; stop_recorded mariadbd; return 1
    fi
    if ! sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >&2 \
            || { log "sacctmgr add cluster failed"; stop_recorded slurmdbd; stop_recorded mariadbd; return 1; }
    fi
    log "accounting up in $(( $(date +%s) - t0 )) s (MariaDB on 127.0.0.1:$DB_PORT, slurmdbd on 127.0.0.1:$DBD_PORT)"
}
# accounting: MariaDB + slurmdbd (optional)
ACCT_ON=0
if [[ $ACCOUNTING != 0 ]]; then
    if start_accounting; then
        ACCT_ON=1
    elif [[ $ACCOUNTING == 1 ]]; then
        die "accounting did not start (MOE_SLURM_ACCOUNTING=1); see $DIR/log/accounting-start.out"
    else
        log "accounting did not start; going on without it (sacct will not work)"
    fi
fi
echo "$ACCT_ON" > "$DIR/run/accounting"
write_conf "$ACCT_ON"

start slurmctld slurmctld -D -f "$CONF" || die "slurmctld did not start"
wait_for slurmctld 30 scontrol ping \
    || { tail -n 30 "$DIR/log/slurmctld.log" >&2 || true; die "slurmctld did not answer within 30 s (log: $DIR/log/slurmctld.log)"; }
start slurmd slurmd -D -f "$CONF" || die "slurmd did not start"

deadline=$(( $(date +%s) + START_TIMEOUT ))
while :; do
    state=$(node_state || true)
    [[ $state == idle* || $state == mix* || $state == alloc* ]] && break
    if [[ $state == drain* || $state == down* ]] && (( $(date +%s) > deadline - START_TIMEOUT + 5 )); then
        # a node left drained or down by an earlier run: ReturnToService=2 covers most cases
        scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
    fi
    if (( $(date +%s) >= deadline )); then
        sinfo -N -l >&2 || true
        tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
        die "node $HOST not idle after ${START_TIMEOUT} s (state: '${state:-no answer}'); logs in $DIR/log"
    fi
    sleep 0.25
done

T1=$(date +%s.%N)
log "cluster up in $(awk -v a="$T0" -v b="$T1" 'BEGIN {printf "%.1f", b - a}') s: node $HOST ($NCPU CPUs, ${REAL_MEM} MiB), partition $PARTITION, accounting=$ACCT_ON, $(sinfo -V)"
print_env
