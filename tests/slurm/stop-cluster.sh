#!/usr/bin/env bash
# Stop the one-node test cluster that tests/slurm/start-cluster.sh started: first cancel its
# jobs (through its own slurmctld, so that their steps end cleanly), then end each daemon it
# recorded in $MOE_SLURM_DIR/run/pids, newest first, by pid (SIGTERM, then SIGKILL after
# 15 s). A recorded pid that now belongs to another program is left alone. Nothing else is
# touched; the folder (state, logs, database) is kept, so that job ids go on after a restart.
# Exits 0 when nothing is running.
set -uo pipefail

DIR=${MOE_SLURM_DIR:-/tmp/moe-harness-slurm}
PIDS=$DIR/run/pids
export SLURM_CONF=$DIR/etc/slurm.conf

log() { echo "stop-cluster: $*" >&2; }

alive() { [[ $(readlink "/proc/$1/exe" 2>/dev/null) == "$2" ]]; }  # alive PID EXE

if [[ ! -s $PIDS ]]; then
    log "nothing recorded in $PIDS: nothing to stop"
    exit 0
fi

names=() pids=() exes=()
while read -r name pid exe; do
    [[ -n ${name:-} && -n ${pid:-} && -n ${exe:-} ]] || continue
    names+=("$name") pids+=("$pid") exes+=("$exe")
done < "$PIDS"

ctld_alive=0
for i in "${!names[@]}"; do
    [[ ${names[$i]} == slurmctld ]] && alive "${pids[$i]}" "${exes[$i]}" && ctld_alive=1
done
if (( ctld_alive )) && [[ -e $SLURM_CONF ]]; then
    jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
    if [[ -n ${jobs// /} ]]; then
        log "cancelling jobs: $jobs"
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs 2>/dev/null || true
        for _ in $(seq 40); do
            [[ -z $(timeout 5 squeue -h -o %A 2>/dev/null) ]] && break
            sleep 0.25
        done
    fi
fi

for (( i = ${#names[@]} - 1; i >= 0; i-- )); do
    name=${names[$i]} pid=${pids[$i]} exe=${exes[$i]}
    if ! alive "$pid" "$exe"; then
        log "$name (pid $pid) is not running"
        continue
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 60); do
        alive "$pid" "$exe" || break
        sleep 0.25
    done
    if alive "$pid" "$exe"; then
        log "$name (pid $pid) ignored SIGTERM for 15 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    log "stopped $name (pid $pid)"
done
: > "$PIDS"
