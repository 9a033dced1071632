#!/usr/bin/env bash
# Stop the one-node SLURM cluster started by start_cluster.sh: slurmd, slurmctld and munged, each by
# the pid in its pid file (never by name, so nothing else on the machine is touched). Running jobs are
# cancelled first. Idempotent. Pass --purge to also delete the state directory (job records, logs).
set -uo pipefail

STATE_DIR="${SLURM_STATE_DIR:-/var/tmp/dreamer_dynamics_slurm}"

# Sends SIGTERM to the pid in file $1 and waits up to 10 s for it to exit.
stop_pid_file() {
    local pid_file="$1" name="$2" pid
    [ -s "$pid_file" ] || { echo "$name: no pid file, not running"; return 0; }
    pid="$(cat "$pid_file")"
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "$name: not running"
        rm -f "$pid_file"
        return 0
    fi
    kill -TERM "$pid"
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "$name (pid $pid) did not exit after SIGTERM" >&2
        return 1
    fi
    echo "$name (pid $pid) stopped"
}

command -v scancel >/dev/null 2>&1 && scancel --user="$(id -un)" 2>/dev/null
status=0
stop_pid_file "$STATE_DIR/slurmd.pid" slurmd || status=1
stop_pid_file "$STATE_DIR/slurmctld.pid" slurmctld || status=1
stop_pid_file /run/munge/munged.pid munged || status=1
if [ "${1:-}" = "--purge" ]; then
    rm -rf "$STATE_DIR"
    echo "removed $STATE_DIR"
fi
exit $status
