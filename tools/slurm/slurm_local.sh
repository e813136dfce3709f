#!/usr/bin/env bash
# slurm_local.sh - prime_mcore's real single-machine Slurm cluster for the slurm tests:
# munged + slurmctld + N x slurmd emulating N nodes (node1..nodeN, each with its own
# hostname) + MariaDB + slurmdbd (accounting, so sacct and submitit see job states).
# No systemd needed; run as root (installs slurm/munge/mariadb from Debian when missing).
#
# Usage:
#   slurm_local.sh start   [options]      install if needed, configure, start; prints "ready"
#                                          (idempotent: a running cluster is left as it is)
#   slurm_local.sh stop    [--purge]      cancel jobs, stop the daemons started here (by pid);
#                                          --purge also deletes the state dir
#   slurm_local.sh restart [options]      stop + start
#   slurm_local.sh status                 daemons + sinfo
#   slurm_local.sh env                    print "export SLURM_CONF=..." (eval it)
#   slurm_local.sh logs                   print the last lines of every daemon log
#   slurm_local.sh selftest               srun + sbatch + sacct smoke test
#
# Options (environment variable in brackets):
#   --state-dir DIR   state/config/log dir            [SLURM_LOCAL_DIR, /tmp/prime-mcore-slurm]
#   --nodes N         emulated nodes (node1..nodeN)   [SLURM_LOCAL_NODES, 2]
#   --cpus N          CPUs per emulated node          [SLURM_LOCAL_CPUS, 2]
#   --mem MB          RealMemory per node             [SLURM_LOCAL_MEM_MB, host RAM]
#   --gpus N          fake GPUs (GRES gpu) per node   [SLURM_LOCAL_GPUS, 0]
#   --partition NAMES partition name(s), comma separated, first is the default;
#                     every partition has all nodes   [SLURM_LOCAL_PARTITION, debug]
#   --accounting / --no-accounting
#                     MariaDB + slurmdbd so that sacct works (submitit needs it to
#                     see failed/cancelled jobs)      [SLURM_LOCAL_ACCOUNTING, 1]
#   --port-base P     ports P+6 (mysql), P+17 (slurmctld), P+19 (slurmdbd),
#                     P+101.. (slurmd)                [SLURM_LOCAL_PORT_BASE, 17800]
#   --timeout S       per-phase wait timeout          [SLURM_LOCAL_TIMEOUT, 90]
#   --no-install      never run apt-get               [SLURM_LOCAL_INSTALL=0]
#   --no-uts          do not give each slurmd its own UTS namespace (hostname)
#                                                     [SLURM_LOCAL_UTS=0]
#   --no-hosts        do not add node names to /etc/hosts [SLURM_LOCAL_HOSTS=0]
#   --system-conf / --no-system-conf
#                     symlink /etc/slurm/slurm.conf to the generated config when
#                     no /etc/slurm/slurm.conf exists, so SLURM_CONF is not needed
#                                                     [SLURM_LOCAL_SYSTEM_CONF, auto]
#   SLURM_LOCAL_NODE_PREFIX (node), SLURM_LOCAL_CLUSTER (primemcore): node/cluster names
#
# After start, clients need SLURM_CONF=<state-dir>/etc/slurm.conf (`eval "$(slurm_local.sh
# env)"`, or the /etc/slurm/slurm.conf symlink). If $GITHUB_ENV is set it is appended there.
# What was measured with it (timings, caveats): the team notes, slurm_local.md.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"   # slurmctld, slurmd, munged, mariadbd live in /usr/sbin

log()  { echo "[slurm-local $(date +%T)] $*" >&2; }
die()  { echo "[slurm-local] ERROR: $*" >&2; exit 1; }

CMD=start
case "${1:-}" in
  start|stop|restart|status|env|logs|selftest) CMD=$1; shift ;;
esac

STATE=${SLURM_LOCAL_DIR:-/tmp/prime-mcore-slurm}
NODES=${SLURM_LOCAL_NODES:-2}
CPUS=${SLURM_LOCAL_CPUS:-2}
MEM_MB=${SLURM_LOCAL_MEM_MB:-}
GPUS=${SLURM_LOCAL_GPUS:-0}
PARTITION=${SLURM_LOCAL_PARTITION:-debug}
ACCOUNTING=${SLURM_LOCAL_ACCOUNTING:-1}
PORT_BASE=${SLURM_LOCAL_PORT_BASE:-17800}
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-90}
INSTALL=${SLURM_LOCAL_INSTALL:-1}
UTS=${SLURM_LOCAL_UTS:-1}
HOSTS=${SLURM_LOCAL_HOSTS:-1}
SYSTEM_CONF=${SLURM_LOCAL_SYSTEM_CONF:-auto}
PURGE=0
CLUSTER=${SLURM_LOCAL_CLUSTER:-primemcore}
NODE_PREFIX=${SLURM_LOCAL_NODE_PREFIX:-node}

while [ $# -gt 0 ]; do
  case "$1" in
    --state-dir) STATE=$2; shift 2 ;;
    --nodes) NODES=$2; shift 2 ;;
    --cpus) CPUS=$2; shift 2 ;;
    --mem) MEM_MB=$2; shift 2 ;;
    --gpus) GPUS=$2; shift 2 ;;
    --partition) PARTITION=$2; shift 2 ;;
    --accounting) ACCOUNTING=1; shift ;;
    --no-accounting) ACCOUNTING=0; shift ;;
    --port-base) PORT_BASE=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    --no-uts) UTS=0; shift ;;
    --no-hosts) HOSTS=0; shift ;;
    --system-conf) SYSTEM_CONF=1; shift ;;
    --no-system-conf) SYSTEM_CONF=0; shift ;;
    --purge) PURGE=1; shift ;;
    -h|--help) sed -n '2,44p' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

for v in NODES CPUS GPUS PORT_BASE TIMEOUT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a number, got '${!v}'"
done
[ -z "$MEM_MB" ] || [[ $MEM_MB =~ ^[0-9]+$ ]] || die "--mem must be a number of MB, got '$MEM_MB'"
[ "$NODES" -ge 1 ] || die "--nodes must be >= 1"
[ "$CPUS" -ge 1 ] || die "--cpus must be >= 1"
case "$STATE" in /*) ;; *) STATE=$(pwd)/$STATE ;; esac
STATE=${STATE%/}

CONF=$STATE/etc/slurm.conf
DBDCONF=$STATE/etc/slurmdbd.conf
RUN=$STATE/run
LOGD=$STATE/log
MUNGE_SOCK=$RUN/munge.socket
MYSQL_SOCK=$RUN/mysqld.sock
MYSQL_PORT=$((PORT_BASE + 6))
CTLD_PORT=$((PORT_BASE + 17))
DBD_PORT=$((PORT_BASE + 19))
NODE_NAMES=()
for i in $(seq 1 "$NODES"); do NODE_NAMES+=("${NODE_PREFIX}$i"); done
HOSTS_MARK="# slurm-local $STATE"
export SLURM_CONF=$CONF

# shellcheck source=tools/slurm/slurm_local_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/slurm_local_lib.sh"


# ---------------------------------------------------------------- system files
setup_hosts() {  # make node names resolvable (torch MASTER_ADDR=first hostname)
  [ "$HOSTS" = 1 ] || return 0
  local missing=() n
  for n in "${NODE_NAMES[@]}"; do getent hosts "$n" >/dev/null 2>&1 || missing+=("$n"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ -w /etc/hosts ]; then
    log "adding to /etc/hosts: 127.0.0.1 ${missing[*]}"
    echo "127.0.0.1 ${missing[*]} $HOSTS_MARK" >> /etc/hosts
  else
    log "WARNING: node names ${missing[*]} do not resolve and /etc/hosts is not writable"
  fi
}

cleanup_hosts() {
  [ -w /etc/hosts ] && grep -qF "$HOSTS_MARK" /etc/hosts || return 0
  local tmp; tmp=$(mktemp)
  grep -vF "$HOSTS_MARK" /etc/hosts > "$tmp" || true
  cat "$tmp" > /etc/hosts   # in place: /etc/hosts may be a bind mount (docker)
  rm -f "$tmp"
}

setup_system_conf() {
  [ "$SYSTEM_CONF" = 0 ] && return 0
  if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$CONF" ]; then return 0; fi
  if [ -L /etc/slurm/slurm.conf ] && [ ! -e /etc/slurm/slurm.conf ]; then
    ln -sfn "$CONF" /etc/slurm/slurm.conf   # dangling link (e.g. a purged state dir): replace
    log "linked /etc/slurm/slurm.conf -> $CONF"
    return 0
  fi
  if [ -e /etc/slurm/slurm.conf ]; then
    [ "$SYSTEM_CONF" = 1 ] && log "WARNING: /etc/slurm/slurm.conf exists, not replacing it; use SLURM_CONF"
    return 0
  fi
  mkdir -p /etc/slurm
  ln -s "$CONF" /etc/slurm/slurm.conf
  log "linked /etc/slurm/slurm.conf -> $CONF"
}

cleanup_system_conf() {
  if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$CONF" ]; then
    rm -f /etc/slurm/slurm.conf
  fi
}

do_start() {
  need_root
  trap 'rc=$?; [ $rc -eq 0 ] || log "start failed (exit $rc); logs are in $LOGD; clean up with: $0 stop --state-dir $STATE"' EXIT
  mkdir -p "$STATE/etc" "$RUN" "$LOGD" "$STATE/ctld" "$STATE/spool"
  chmod 755 "$STATE" "$RUN"
  touch "$STATE/.slurm-local"
  local t0=$SECONDS
  install_pkgs
  write_config
  if [ "$CONFIG_CHANGED" = 1 ] && any_slurm_daemon_alive; then
    log "configuration changed: restarting slurm daemons"
    stop_slurm_daemons
    stop_pidfile "$RUN/slurmdbd.pid" slurmdbd 30
  fi
  UTS_OK=0
  if [ "$UTS" = 1 ]; then
    if unshare --uts true 2>/dev/null; then UTS_OK=1
    else log "WARNING: 'unshare --uts' not permitted; all nodes will share the real hostname"; fi
  fi
  setup_hosts
  setup_system_conf
  start_munge
  if [ "$ACCOUNTING" = 1 ]; then start_mariadb; start_slurmdbd; fi
  start_slurmctld
  local i=0 n
  for n in "${NODE_NAMES[@]}"; do i=$((i + 1)); start_slurmd "$n" "$i"; done
  wait_nodes
  if [ -n "${GITHUB_ENV:-}" ] && [ -w "${GITHUB_ENV}" ]; then
    echo "SLURM_CONF=$CONF" >> "$GITHUB_ENV"
  fi
  log "cluster '$CLUSTER' up in $((SECONDS - t0))s: $NODES node(s) x $CPUS CPU(s), partition '$PARTITION', accounting=$ACCOUNTING"
  log "clients need: export SLURM_CONF=$CONF"
  sinfo >&2
  echo ready
}


do_stop() {
  [ -d "$STATE" ] || { log "no state dir $STATE; nothing to stop"; [ "$PURGE" = 1 ] || return 0; }
  if [ -f "$CONF" ] && pid_alive "$RUN/slurmctld.pid" slurmctld; then
    local jobs
    jobs=$(squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      log "cancelling jobs: $(echo "$jobs" | tr '\n' ' ')"
      # shellcheck disable=SC2086  # one argument per job id
      scancel $jobs 2>/dev/null || true
      local end=$((SECONDS + 20))
      while [ -n "$(squeue -h -o %i 2>/dev/null)" ] && [ $SECONDS -lt $end ]; do sleep 0.5; done
    fi
  fi
  if [ -d "$RUN" ]; then
    stop_slurm_daemons
    stop_pidfile "$RUN/slurmdbd.pid" slurmdbd 30
    stop_pidfile "$RUN/mariadbd.pid" mariadbd 60
    stop_pidfile "$RUN/munged.pid" munged 10
  fi
  cleanup_hosts
  cleanup_system_conf
  if [ "$PURGE" = 1 ] && [ -f "$STATE/.slurm-local" ]; then
    log "removing $STATE"; rm -rf "$STATE"
  elif [ "$PURGE" = 1 ] && [ -d "$STATE" ]; then
    die "refusing to delete $STATE: not a slurm-local state dir (.slurm-local missing)"
  fi
  echo stopped
}

do_status() {
  local f rc=0
  for f in munged:munged.pid mariadbd:mariadbd.pid slurmdbd:slurmdbd.pid slurmctld:slurmctld.pid; do
    local comm=${f%%:*} pf=$RUN/${f#*:}
    [ -e "$pf" ] || continue
    if pid_alive "$pf" "$comm"; then echo "$comm running (pid $(pid_of "$pf"))"; else echo "$comm NOT running"; rc=1; fi
  done
  for f in "$RUN"/slurmd-*.pid; do
    [ -e "$f" ] || continue
    if pid_alive "$f" slurmd; then echo "slurmd $(basename "$f" .pid | sed 's/^slurmd-//') running (pid $(pid_of "$f"))"; else echo "$(basename "$f") NOT running"; rc=1; fi
  done
  if [ ! -f "$CONF" ]; then echo "no config at $CONF"; rc=1
  elif ! sinfo -N 2>&1; then rc=1; fi
  return $rc
}

do_logs() {  # for CI: everything a failed slurm test needs to be diagnosed
  local f
  for f in "$LOGD"/*.log; do [ -e "$f" ] && LOG_LINES=60 show_logs "$f"; done
  [ -e "$CONF" ] && ctld_up && { squeue >&2 || true; sinfo -N -l >&2 || true; }
  return 0
}

do_selftest() {
  [ -f "$CONF" ] || die "no config at $CONF; run start first"
  ctld_up || die "slurmctld not responding (config $CONF)"
  local n tmp jid end state
  n=$(sinfo -h -N -o %N | sort -u | wc -l)
  tmp=$(mktemp -d "$STATE/selftest.XXXXXX"); chmod 777 "$tmp"
  log "selftest: srun on $n node(s)"
  srun -N "$n" --ntasks-per-node=1 -t 1 bash -c 'echo "  rank $SLURM_PROCID node $SLURMD_NODENAME hostname $(hostname)"' | sort >&2 \
    || die "srun failed"
  jid=$(sbatch --parsable -N "$n" --ntasks-per-node=1 -t 2 -o "$tmp/%j.out" \
        --wrap 'srun bash -c "echo task \$SLURM_PROCID on \$SLURMD_NODENAME"') || die "sbatch failed"
  log "selftest: sbatch job $jid"
  end=$((SECONDS + TIMEOUT))
  while [ -n "$(squeue -h -j "$jid" 2>/dev/null)" ]; do
    [ $SECONDS -lt $end ] || { squeue >&2; die "job $jid did not finish in ${TIMEOUT}s"; }
    sleep 0.3
  done
  [ "$(grep -c '^task' "$tmp/$jid.out" 2>/dev/null)" = "$n" ] || { cat "$tmp/$jid.out" >&2 || true; die "unexpected job output"; }
  if grep -q '^AccountingStorageType=accounting_storage/slurmdbd' "$CONF"; then
    end=$((SECONDS + 20)); state=""
    until [ "$state" = COMPLETED ]; do
      state=$(sacct -n -X -P -j "$jid" -o State 2>/dev/null | head -n1)
      [ $SECONDS -lt $end ] || die "sacct reports '$state' for job $jid"
      sleep 0.5
    done
    log "selftest: sacct says job $jid COMPLETED"
  fi
  rm -rf "$tmp"
  echo "selftest ok"
}

case "$CMD" in
  start) do_start ;;
  stop) do_stop ;;
  restart) do_stop; do_start ;;
  status) do_status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  logs) do_logs ;;
  selftest) do_selftest ;;
esac
