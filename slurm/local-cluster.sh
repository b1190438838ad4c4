#!/usr/bin/env bash
# A two-node SLURM cluster on one machine, for tests and CI.
#
#   slurm/local-cluster.sh start    # install slurm-wlm + munge if missing, start the daemons
#   slurm/local-cluster.sh stop     # stop exactly the daemons that `start` started
#   slurm/local-cluster.sh status   # which daemons run, and sinfo
#   slurm/local-cluster.sh env      # prints `export SLURM_CONF=...` for clients (sbatch, srun)
#
# Two "nodes", n1 and n2, are two slurmd processes on this host (ports 17001/17002), both with
# NodeAddr=127.0.0.1. Node names do not resolve, so a distributed job must use
# MASTER_ADDR=127.0.0.1 (the sbatch template's `master_addr` option).
#
# Needs root (daemons run as root, munged as user munge) and, when slurm is not installed yet,
# Debian's apt. When either is missing it exits 77 with a one-line reason, so tests can skip.
#
# Environment:
#   LIT_SLURM_DIR       scratch dir for config, state, spool, logs, pid files
#                       (default /tmp/lit-unitscale-slurm)
#   LIT_SLURM_CPUS      CPUs per node (default 2): enough for 1 task per node with a couple of
#                       threads; both nodes share the host's cores, which is fine for tests.
#   LIT_SLURM_TIMEOUT   seconds to wait for both nodes to become idle (default 60)
set -euo pipefail

DIR=${LIT_SLURM_DIR:-/tmp/lit-unitscale-slurm}
CPUS=${LIT_SLURM_CPUS:-2}
TIMEOUT=${LIT_SLURM_TIMEOUT:-60}
CONF="$DIR/etc/slurm.conf"
MUNGE_DIR="$DIR/munge"
MUNGE_SOCKET="$MUNGE_DIR/munge.socket"
RUN="$DIR/run"   # our pid files: one per daemon we start
NODES=(n1 n2)
CTLD_PORT=17000
EXIT_CANNOT_RUN=77

die() { echo "local-cluster: $*" >&2; exit 1; }
cannot_run() { echo "local-cluster: cannot run here: $*" >&2; exit "$EXIT_CANNOT_RUN"; }

# True when the pid in pid file $1 is alive and still the program named $2.
alive() {
  local pidfile="$RUN/$1.pid" pid
  [ -f "$pidfile" ] || return 1
  pid=$(cat "$pidfile")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  # Guard against pid reuse after a reboot or a crash: the command must match.
  grep -qa "$2" "/proc/$pid/cmdline" 2>/dev/null
}

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
    && command -v sbatch >/dev/null && command -v munged >/dev/null; then
    return
  fi
  command -v apt-get >/dev/null || cannot_run "slurm is not installed and apt-get is unavailable"
  echo "local-cluster: installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || die "apt-get update failed"
  apt-get install -y -qq slurm-wlm munge >/dev/null || die "apt-get install slurm-wlm failed"
}

ensure_munge_key() {
  local key=/etc/munge/munge.key
  if [ ! -s "$key" ]; then
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null; then
      mungekey --create --keyfile="$key" --force
    else
      dd if=/dev/urandom bs=1 count=1024 of="$key" status=none
    fi
  fi
  chown munge:munge /etc/munge "$key"
  chmod 0700 /etc/munge
  chmod 0400 "$key"
}

write_conf() {
  local host
  host=$(hostname)
  mkdir -p "$DIR/etc" "$DIR/state" "$DIR/spool" "$DIR/log" "$RUN"
  cat >"$CONF" <<EOF
# Written by slurm/local-cluster.sh: a two-node test cluster on one host.
ClusterName=lit-unitscale-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also delays a requeued job (default 120 s); 10 s keeps requeue tests short.
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/state/slurmctld.pid
SlurmdPidFile=$DIR/spool/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups here: processes are tracked by parent pid and tasks are not bound.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Trust the CPU counts below even when this host has fewer cores: both nodes share it.
SlurmdParameters=config_overrides
# A node that was down comes back by itself once its slurmd registers.
ReturnToService=2
# Jobs may be requeued (scontrol requeue, Lightning's auto-requeue on SIGUSR1).
JobRequeue=1
# Short waits keep tests fast: schedule every 2 s, so a requeued job restarts promptly.
SchedulerParameters=sched_interval=2,bf_interval=2
KillWait=5
MinJobAge=300
SlurmdTimeout=30
InactiveLimit=0
NodeName=n1 NodeHostname=$host NodeAddr=127.0.0.1 Port=17001 CPUs=$CPUS State=UNKNOWN
NodeName=n2 NodeHostname=$host NodeAddr=127.0.0.1 Port=17002 CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
  alive munged munged && return
  mkdir -p "$MUNGE_DIR"
  chown munge:munge "$MUNGE_DIR"
  chmod 0755 "$MUNGE_DIR"   # clients (slurm) must reach the socket
  # setpriv execs munged directly, so $! is munged's own pid.
  setpriv --reuid=munge --regid=munge --init-groups \
    munged -F --socket="$MUNGE_SOCKET" --pid-file="$MUNGE_DIR/munged.pid" \
    --log-file="$MUNGE_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed" \
    >>"$DIR/log/munged.out" 2>&1 &
  echo $! >"$RUN/munged.pid"
  for _ in $(seq 50); do
    [ -S "$MUNGE_SOCKET" ] && return
    sleep 0.1
  done
  die "munged did not create $MUNGE_SOCKET; see $MUNGE_DIR/munged.log"
}

start_slurm() {
  export SLURM_CONF="$CONF"
  if ! alive slurmctld slurmctld; then
    # -c: start from a clean state; this cluster keeps nothing between runs.
    slurmctld -D -c >>"$DIR/log/slurmctld.out" 2>&1 &
    echo $! >"$RUN/slurmctld.pid"
  fi
  local node
  for node in "${NODES[@]}"; do
    mkdir -p "$DIR/spool/$node"
    if ! alive "slurmd-$node" slurmd; then
      slurmd -D -N "$node" >>"$DIR/log/slurmd-$node.out" 2>&1 &
      echo $! >"$RUN/slurmd-$node.pid"
    fi
  done
}

wait_idle() {
  local deadline=$((SECONDS + TIMEOUT)) states
  while [ "$SECONDS" -lt "$deadline" ]; do
    states=$(SLURM_CONF="$CONF" sinfo -h -N -o '%N %t' 2>/dev/null | sort -u || true)
    if [ "$(echo "$states" | grep -cE '^n[12] idle$')" -eq 2 ]; then
      return
    fi
    for daemon in munged slurmctld slurmd-n1 slurmd-n2; do
      alive "$daemon" "${daemon%-n*}" || die "$daemon exited; see $DIR/log/"
    done
    sleep 0.5
  done
  die "nodes not idle after ${TIMEOUT}s (sinfo: $(echo "$states" | tr '\n' ' ')); see $DIR/log/"
}

cmd_start() {
  [ "$(id -u)" -eq 0 ] || cannot_run "must run as root (daemons run as root, munged as munge)"
  if alive slurmctld slurmctld && alive slurmd-n1 slurmd && alive slurmd-n2 slurmd \
    && alive munged munged; then
    echo "local-cluster: already running ($CONF)"
    return
  fi
  install_packages
  command -v setpriv >/dev/null || cannot_run "setpriv (util-linux) is missing"
  ensure_munge_key
  write_conf
  start_munge
  start_slurm
  wait_idle
  echo "local-cluster: nodes n1 n2 idle; clients need: export SLURM_CONF=$CONF"
}

# Send TERM to the daemons named by pid files "$@" (pidfile:program), then wait for all of
# them together (each takes 1-2 s to exit); KILL whatever is left after 10 s.
stop_daemons() {
  local item name prog pid pids=()
  for item in "$@"; do
    name=${item%%:*}
    prog=${item##*:}
    if alive "$name" "$prog"; then
      pid=$(cat "$RUN/$name.pid")
      kill "$pid" 2>/dev/null || true
      pids+=("$pid")
      echo "local-cluster: stopping $name ($pid)"
    fi
    rm -f "$RUN/$name.pid"
  done
  for _ in $(seq 100); do
    local left=()
    # ${a[@]+"${a[@]}"}: an empty array is "unbound" under set -u in bash 4.3 and older.
    for pid in ${pids[@]+"${pids[@]}"}; do
      kill -0 "$pid" 2>/dev/null && left+=("$pid")
    done
    [ "${#left[@]}" -eq 0 ] && return
    sleep 0.1
  done
  kill -9 "${left[@]}" 2>/dev/null || true
}

cmd_stop() {
  if alive slurmctld slurmctld; then
    # Cancel this cluster's jobs first so slurmd ends their steps before it exits.
    SLURM_CONF="$CONF" scancel --quiet --partition=debug 2>/dev/null || true
    for _ in $(seq 50); do
      [ -z "$(SLURM_CONF="$CONF" squeue -h -o %i 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
  stop_daemons slurmd-n1:slurmd slurmd-n2:slurmd slurmctld:slurmctld munged:munged
}

cmd_status() {
  local rc=0 daemon
  for daemon in munged slurmctld slurmd-n1 slurmd-n2; do
    if alive "$daemon" "${daemon%-n*}"; then
      echo "$daemon: running (pid $(cat "$RUN/$daemon.pid"))"
    else
      echo "$daemon: stopped"
      rc=1
    fi
  done
  if [ "$rc" -eq 0 ]; then
    SLURM_CONF="$CONF" sinfo -N -o '%N %P %t %c'
  fi
  return "$rc"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
