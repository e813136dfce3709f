# slurm_local_lib.sh - helpers of slurm_local.sh (sourced, never run): process and port
# checks, package install, config generation, and starting each daemon with a timeout.
# Every function reads the variables that slurm_local.sh sets (STATE, RUN, LOGD, CONF, ...).
# shellcheck shell=bash disable=SC2154

# ---------------------------------------------------------------- helpers
proc_running() {  # pid: exists and is not a zombie (init may reap slowly)
  local st
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}
pid_alive() {  # pidfile expected-comm
  local pf=$1 comm=$2 pid
  [ -s "$pf" ] || return 1
  pid=$(tr -dc '0-9' < "$pf")
  [ -n "$pid" ] && proc_running "$pid" || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ]
}
pid_of() { tr -dc '0-9' < "$1"; }

show_logs() {  # show tails of the given log files
  local f
  for f in "$@"; do
    [ -f "$f" ] || { echo "----- $f (missing)" >&2; continue; }
    echo "----- last lines of $f" >&2
    tail -n "${LOG_LINES:-25}" "$f" >&2
  done
}

# wait_for DESC TIMEOUT WATCH CMD... : poll CMD until it succeeds.
# WATCH is "pidfile:comm" of a daemon that must stay alive meanwhile (fail fast), or "-".
# Returns 1 on timeout, 2 if the watched daemon died.
wait_for() {
  local what=$1 t=$2 watch=$3; shift 3
  local start=$SECONDS pf comm
  until "$@" >/dev/null 2>&1; do
    if [ "$watch" != - ]; then
      pf=${watch%%:*}; comm=${watch#*:}
      if [ -s "$pf" ]; then
        proc_running "$(pid_of "$pf")" || { log "$comm exited while waiting for: $what"; return 2; }
      elif [ $((SECONDS - start)) -ge 15 ]; then
        log "$comm wrote no pid file ($pf) within 15s"; return 2
      fi
    fi
    if [ $((SECONDS - start)) -ge "$t" ]; then
      log "timeout (${t}s) waiting for: $what"
      return 1
    fi
    sleep 0.2
  done
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_port() {  # port daemon-name
  if port_busy "$1"; then
    die "port $1 (for $2) is already in use by another process; stop it or pick other ports with --port-base"
  fi
}

stop_pidfile() {  # pidfile comm [timeout]
  local pf=$1 comm=$2 t=${3:-20} pid
  pid_alive "$pf" "$comm" || { rm -f "$pf"; return 0; }
  pid=$(pid_of "$pf")
  log "stopping $comm (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  local end=$((SECONDS + t))
  while proc_running "$pid" && [ $SECONDS -lt $end ]; do sleep 0.1; done
  if proc_running "$pid"; then
    log "$comm (pid $pid) did not exit after ${t}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$pf"
}

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (slurmd must be root to launch jobs)"; }

# ---------------------------------------------------------------- install
install_pkgs() {
  local missing=() pkgs=()
  command -v slurmctld >/dev/null || missing+=(slurmctld)
  command -v slurmd >/dev/null || missing+=(slurmd)
  command -v sbatch >/dev/null || missing+=(slurm-client)
  command -v munged >/dev/null || missing+=(munge)
  if [ "$ACCOUNTING" = 1 ]; then
    command -v slurmdbd >/dev/null || missing+=(slurmdbd)
    command -v mariadbd >/dev/null || missing+=(mariadb-server)
  fi
  command -v unshare >/dev/null || missing+=(util-linux)
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$INSTALL" = 1 ] || die "missing packages: ${missing[*]} (and --no-install given)"
  command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get"
  pkgs=("${missing[@]}")
  log "installing: ${pkgs[*]}"
  # keep package postinst scripts from starting system-wide daemons
  local policy_created=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
    policy_created=1
  fi
  local t0=$SECONDS rc=0
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y --no-install-recommends "${pkgs[@]}" > "$LOGD/apt.log" 2>&1; then
    apt-get update >> "$LOGD/apt.log" 2>&1 || true
    apt-get install -y --no-install-recommends "${pkgs[@]}" >> "$LOGD/apt.log" 2>&1 || rc=$?
  fi
  [ $policy_created = 1 ] && rm -f /usr/sbin/policy-rc.d
  if [ $rc -ne 0 ]; then show_logs "$LOGD/apt.log"; die "apt-get install failed"; fi
  log "installed in $((SECONDS - t0))s: $(slurmctld -V)"
}

# ---------------------------------------------------------------- config
host_mem_mb() { awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo; }

write_config() {
  local mem=${MEM_MB:-$(host_mem_mb)} tmp i n gres_line="" acct
  tmp=$(mktemp "$STATE/etc/.slurm.conf.XXXX")
  if [ "$ACCOUNTING" = 1 ]; then
    acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
# munge socket used for the slurmdbd connection (sacct, sacctmgr, slurmctld)
AccountingStoragePass=$MUNGE_SOCK
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
  else
    acct="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
  fi
  [ "$GPUS" -gt 0 ] && gres_line="GresTypes=gpu"
  cat > "$tmp" <<EOF
# generated by tools/slurm/slurm_local.sh - do not edit (regenerated on every start)
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
SlurmdPort=$((PORT_BASE + 18))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also is the delay before a requeued job may start again (default 120s)
AuthInfo=socket=$MUNGE_SOCK,cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOGD/slurmctld.log
SlurmdLogFile=$LOGD/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
$acct
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# start jobs quickly (defaults: batch_sched_delay=3s, sched_interval=60s, bf_interval=30s)
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# trust the CPU/memory counts below instead of the (shared) hardware
SlurmdParameters=config_overrides
ReturnToService=2
MailProg=/bin/true
KillWait=5
MinJobAge=300
$gres_line
EOF
  for i in $(seq 1 "$NODES"); do
    n=${NODE_PREFIX}$i
    echo "NodeName=$n NodeHostname=$n NodeAddr=127.0.0.1 Port=$((PORT_BASE + 100 + i)) CPUs=$CPUS RealMemory=$mem$([ "$GPUS" -gt 0 ] && echo " Gres=gpu:$GPUS") State=UNKNOWN" >> "$tmp"
  done
  local part def=YES
  IFS=, read -ra PARTS <<< "$PARTITION"
  for part in "${PARTS[@]}"; do   # all partitions contain all nodes; the first is the default
    echo "PartitionName=$part Nodes=ALL Default=$def MaxTime=INFINITE State=UP" >> "$tmp"
    def=NO
  done

  if [ "$GPUS" -gt 0 ]; then
    # fake GPU device files (char devices equal to /dev/null): lets jobs request
    # --gpus-per-node/--gres=gpu:N and get CUDA_VISIBLE_DEVICES; no real GPU.
    mkdir -p "$STATE/dev"
    : > "$STATE/etc/gres.conf.new"
    for i in $(seq 1 "$NODES"); do
      for g in $(seq 0 $((GPUS - 1))); do
        [ -e "$STATE/dev/${NODE_PREFIX}$i-gpu$g" ] || mknod "$STATE/dev/${NODE_PREFIX}$i-gpu$g" c 1 3
      done
      echo "NodeName=${NODE_PREFIX}$i Name=gpu File=$STATE/dev/${NODE_PREFIX}$i-gpu[0-$((GPUS - 1))]" >> "$STATE/etc/gres.conf.new"
    done
    mv "$STATE/etc/gres.conf.new" "$STATE/etc/gres.conf"
  else
    rm -f "$STATE/etc/gres.conf"
  fi

  CONFIG_CHANGED=0
  if [ -f "$CONF" ] && cmp -s "$tmp" "$CONF"; then rm -f "$tmp"; else mv "$tmp" "$CONF"; CONFIG_CHANGED=1; fi
  chmod 644 "$CONF"

  if [ "$ACCOUNTING" = 1 ]; then
    cat > "$DBDCONF" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MYSQL_PORT
StorageUser=slurm
StoragePass=slurmlocal
StorageLoc=slurm_acct_db_$CLUSTER
PidFile=$RUN/slurmdbd.pid
LogFile=$LOGD/slurmdbd.log
DebugLevel=info
EOF
    chmod 600 "$DBDCONF"
  else
    rm -f "$DBDCONF"
  fi
}

# ---------------------------------------------------------------- daemons
start_munge() {
  if [ ! -s "$STATE/munge/munge.key" ]; then
    mkdir -p "$STATE/munge"; chmod 700 "$STATE/munge"
    dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 2>/dev/null
    chmod 400 "$STATE/munge/munge.key"
  fi
  if ! pid_alive "$RUN/munged.pid" munged; then
    rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock" "$RUN/munged.pid"
    log "starting munged"
    munged --socket="$MUNGE_SOCK" --key-file="$STATE/munge/munge.key" \
      --log-file="$LOGD/munged.log" --pid-file="$RUN/munged.pid" \
      --seed-file="$STATE/munge/munged.seed" --num-threads=4 \
      || { show_logs "$LOGD/munged.log"; die "munged failed to start"; }
  fi
  wait_for "munge credential round trip" "$TIMEOUT" "$RUN/munged.pid:munged" \
    bash -c "munge -n -S '$MUNGE_SOCK' | unmunge -S '$MUNGE_SOCK'" \
    || { show_logs "$LOGD/munged.log"; die "munged not working"; }
}

start_mariadb() {
  if [ ! -d "$STATE/mysql/mysql" ]; then
    log "initialising MariaDB data dir"
    mkdir -p "$STATE/mysql"
    mariadb-install-db --no-defaults --datadir="$STATE/mysql" --user=root \
      --auth-root-authentication-method=socket --skip-test-db > "$LOGD/mariadb-install.log" 2>&1 \
      || { show_logs "$LOGD/mariadb-install.log"; die "mariadb-install-db failed"; }
  fi
  if ! pid_alive "$RUN/mariadbd.pid" mariadbd; then
    check_port "$MYSQL_PORT" mariadbd
    log "starting mariadbd (127.0.0.1:$MYSQL_PORT)"
    rm -f "$MYSQL_SOCK"
    setsid mariadbd --no-defaults --datadir="$STATE/mysql" --socket="$MYSQL_SOCK" \
      --port="$MYSQL_PORT" --bind-address=127.0.0.1 --user=root \
      --pid-file="$RUN/mariadbd.pid" --log-error="$LOGD/mariadbd.log" \
      --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 --skip-log-bin \
      </dev/null >/dev/null 2>&1 &
    echo $! > "$RUN/mariadbd.pid"   # mariadbd rewrites it with the same pid
  fi
  wait_for "mariadbd ping" "$TIMEOUT" "$RUN/mariadbd.pid:mariadbd" \
    mariadb-admin --no-defaults -S "$MYSQL_SOCK" ping \
    || { show_logs "$LOGD/mariadbd.log"; die "mariadbd did not come up"; }
  mariadb --no-defaults -S "$MYSQL_SOCK" -e "
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmlocal';
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmlocal';
    GRANT ALL ON \`slurm_acct_db_$CLUSTER\`.* TO 'slurm'@'localhost';
    GRANT ALL ON \`slurm_acct_db_$CLUSTER\`.* TO 'slurm'@'127.0.0.1';
    FLUSH PRIVILEGES;" || { show_logs "$LOGD/mariadbd.log"; die "could not create MariaDB user"; }
}

start_slurmdbd() {
  if ! pid_alive "$RUN/slurmdbd.pid" slurmdbd; then
    check_port "$DBD_PORT" slurmdbd
    rm -f "$RUN/slurmdbd.pid"
    log "starting slurmdbd (port $DBD_PORT)"
    slurmdbd || { show_logs "$LOGD/slurmdbd.log"; die "slurmdbd failed to start"; }
  fi
  wait_for "slurmdbd answers (sacctmgr list cluster)" "$TIMEOUT" "$RUN/slurmdbd.pid:slurmdbd" \
    sacctmgr -n list cluster \
    || { show_logs "$LOGD/slurmdbd.log" "$LOGD/mariadbd.log"; die "slurmdbd not reachable"; }
}

any_slurm_daemon_alive() {
  local f
  pid_alive "$RUN/slurmctld.pid" slurmctld && return 0
  pid_alive "$RUN/slurmdbd.pid" slurmdbd && return 0
  for f in "$RUN"/slurmd-*.pid; do pid_alive "$f" slurmd && return 0; done
  return 1
}

ctld_up() { scontrol ping 2>/dev/null | grep -q 'is UP'; }

start_slurmctld() {
  if ! pid_alive "$RUN/slurmctld.pid" slurmctld; then
    check_port "$CTLD_PORT" slurmctld
    rm -f "$RUN/slurmctld.pid"
    log "starting slurmctld (port $CTLD_PORT)"
    slurmctld || { show_logs "$LOGD/slurmctld.log"; die "slurmctld failed to start"; }
  fi
  wait_for "slurmctld ping" "$TIMEOUT" "$RUN/slurmctld.pid:slurmctld" ctld_up \
    || { show_logs "$LOGD/slurmctld.log"; die "slurmctld not responding"; }
}

start_slurmd() {
  local n=$1 i=$2
  mkdir -p "$STATE/spool/$n"
  pid_alive "$RUN/slurmd-$n.pid" slurmd && return 0
  check_port "$((PORT_BASE + 100 + i))" "slurmd $n"
  rm -f "$RUN/slurmd-$n.pid"
  log "starting slurmd for $n (port $((PORT_BASE + 100 + i)))"
  if [ "$UTS_OK" = 1 ]; then
    # own UTS namespace => `hostname` inside jobs on this node prints $n
    unshare --uts sh -c "hostname '$n' 2>/dev/null || echo '$n' > /proc/sys/kernel/hostname; exec slurmd -N '$n'" \
      || { show_logs "$LOGD/slurmd-$n.log"; die "slurmd $n failed to start"; }
  else
    slurmd -N "$n" || { show_logs "$LOGD/slurmd-$n.log"; die "slurmd $n failed to start"; }
  fi
}

nodes_ready() {  # all nodes in a usable state
  local out bad
  out=$(sinfo -h -N -o '%N %T' 2>/dev/null) || return 1
  [ "$(echo "$out" | awk 'NF' | sort -u | wc -l)" -ge "$NODES" ] || return 1
  bad=$(echo "$out" | awk '$2 !~ /^(idle|mixed|allocated|completing)$/' )
  [ -z "$bad" ]
}

wait_nodes() {
  local end=$((SECONDS + TIMEOUT)) resumed=0 out
  while ! nodes_ready; do
    out=$(sinfo -h -N -o '%N %T' 2>/dev/null || true)
    if [ $resumed = 0 ] && echo "$out" | grep -qE 'drain|down' && \
       ! echo "$out" | grep -qE 'unknown|not_responding|\*'; then
      # registered but drained/down from an older state: resume once
      log "resuming nodes: $(echo "$out" | tr '\n' ' ')"
      scontrol update NodeName="$(echo "${NODE_NAMES[*]}" | tr ' ' ',')" State=RESUME >/dev/null 2>&1 || true
      resumed=1
    fi
    local dead="" n
    for n in "${NODE_NAMES[@]}"; do
      [ -s "$RUN/slurmd-$n.pid" ] && ! pid_alive "$RUN/slurmd-$n.pid" slurmd && dead="$dead $n"
    done
    pid_alive "$RUN/slurmctld.pid" slurmctld || dead="$dead slurmctld"
    if [ -n "$dead" ] || [ $SECONDS -ge $end ]; then
      if [ -n "$dead" ]; then log "daemon(s) exited:$dead"; else log "timeout (${TIMEOUT}s) waiting for nodes to become idle"; fi
      sinfo -N -l >&2 || true
      scontrol show node 2>/dev/null | grep -E 'NodeName|State=|Reason' >&2 || true
      local logs=("$LOGD/slurmctld.log") n
      for n in "${NODE_NAMES[@]}"; do logs+=("$LOGD/slurmd-$n.log"); done
      show_logs "${logs[@]}"
      die "nodes not ready"
    fi
    sleep 0.3
  done
}

stop_slurm_daemons() {
  local n
  for f in "$RUN"/slurmd-*.pid; do [ -e "$f" ] && stop_pidfile "$f" slurmd 20; done
  # job steps whose slurmd is gone (slurmstepd chdirs to the slurmd log dir)
  local p
  for p in $(pgrep -x slurmstepd 2>/dev/null || true); do
    if [ "$(readlink "/proc/$p/cwd" 2>/dev/null)" = "$LOGD" ]; then
      log "killing leftover slurmstepd $p"; kill -KILL "$p" 2>/dev/null || true
    fi
  done
  stop_pidfile "$RUN/slurmctld.pid" slurmctld 30
}
