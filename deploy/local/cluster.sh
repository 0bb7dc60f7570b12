#!/usr/bin/env bash
# Runs a three-node RabbitMQ cluster on this machine, beside the default node (rabbit@localhost,
# 127.0.0.1:5672), for failover tests and benchmarks. The nodes paysync-c1@localhost,
# paysync-c2@localhost and paysync-c3@localhost listen for AMQP on 127.0.0.1:5681, :5682 and
# :5683, and keep their configuration, data and logs under /var/lib/paysync-cluster/c1, c2 and c3.
# Nothing of the default node is read or changed: each node gets its own environment file
# (instead of /etc/rabbitmq/rabbitmq-env.conf, whose NODENAME=rabbit@localhost it must not take),
# its own configuration file (instead of /etc/rabbitmq/rabbitmq.conf, whose listener on 5672 it
# must not take) and no plugins. The nodes run as the `rabbitmq` user, like the default node, so
# they share its Erlang cookie (/var/lib/rabbitmq/.erlang.cookie) and epmd.
#
#   cluster.sh start         starts the nodes that are down, joins c2 and c3 to c1 when they are
#                            not members yet, waits until all three answer the AMQP handshake
#                            and c1 lists all three as running, then prints the AMQP URLs
#   cluster.sh stop [--wipe] stops the nodes (rabbitmqctl stop, SIGKILL after the deadline);
#                            keeps their data unless --wipe
#   cluster.sh reset         stop --wipe: the next start makes a fresh cluster
#   cluster.sh status        one line per node: running (answers the AMQP handshake), up but not
#                            answering (booting or wedged) or down; its port and its OS pid
#   cluster.sh pid c1|c2|c3  the OS pid of that node's Erlang VM (for kill -9 in tests)
#   cluster.sh urls          the comma-separated AMQP URLs
#
# Environment: PAYSYNC_CLUSTER_DIR (/var/lib/paysync-cluster), PAYSYNC_CLUSTER_BASE_PORT (5681:
# c1's AMQP port; c2 and c3 take the next two), PAYSYNC_CLUSTER_DIST_BASE_PORT (base + 20000:
# the nodes' Erlang distribution ports), PAYSYNC_CLUSTER_DEADLINE_SECS (120: every wait),
# PAYSYNC_CLUSTER_EXTRA_CONF (a file appended to each node's rabbitmq.conf, e.g. raft.* settings;
# applied at the node's next start), PAYSYNC_CLUSTER_AMQP_HANDSHAKE_SECS (10).
#
# Idempotent: run `start` as often as you like; a node killed with kill -9 is started again and
# rejoins. One line per action; non-zero exit with a reason when it cannot. For development
# machines and CI only: the nodes accept the `guest` user on loopback.
set -euo pipefail

CLUSTER_DIR=${PAYSYNC_CLUSTER_DIR:-/var/lib/paysync-cluster}
BASE_PORT=${PAYSYNC_CLUSTER_BASE_PORT:-5681}
DIST_BASE_PORT=${PAYSYNC_CLUSTER_DIST_BASE_PORT:-$((BASE_PORT + 20000))}
DEADLINE_SECS=${PAYSYNC_CLUSTER_DEADLINE_SECS:-120}
EXTRA_CONF=${PAYSYNC_CLUSTER_EXTRA_CONF:-}
AMQP_HANDSHAKE_SECS=${PAYSYNC_CLUSTER_AMQP_HANDSHAKE_SECS:-10}
NODES=(c1 c2 c3)
RUN_USER=rabbitmq
MARKER=.paysync-cluster

say() { echo "cluster: $*"; }
die() { echo "cluster: error: $*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || die "not root and no sudo: cannot run RabbitMQ nodes as $RUN_USER"
  SUDO="sudo"
fi

# Per-node names, ports and paths. c1 -> index 0.
node_index() {
  case $1 in
    c1) echo 0 ;; c2) echo 1 ;; c3) echo 2 ;;
    *) die "unknown node '$1' (expected c1, c2 or c3)" ;;
  esac
}
node_name() { echo "paysync-$1@localhost"; }
node_port() { echo $((BASE_PORT + $(node_index "$1"))); }
node_dist_port() { echo $((DIST_BASE_PORT + $(node_index "$1"))); }
node_dir() { echo "$CLUSTER_DIR/$1"; }
node_pid_file() { echo "$(node_dir "$1")/rabbitmq.pid"; }
# Output of the rabbitmq-server and rabbitmqctl calls this script makes (the node's own logs are
# in $CLUSTER_DIR/cN/log, owned by the rabbitmq user).
cli_log() { echo "${TMPDIR:-/tmp}/paysync-cluster-$1.log"; }
node_url() { echo "amqp://guest:guest@127.0.0.1:$(node_port "$1")/%2f"; }
all_urls() {
  local n urls=()
  for n in "${NODES[@]}"; do urls+=("$(node_url "$n")"); done
  (IFS=,; echo "${urls[*]}")
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# amqp_answers PORT: the broker answers an AMQP 0-9-1 protocol header with a frame
# (Connection.Start, frame type 1) within AMQP_HANDSHAKE_SECS (as in services.sh).
amqp_answers() {
  local first
  first=$(timeout "$AMQP_HANDSHAKE_SECS" bash -c \
    'exec 3<>"/dev/tcp/127.0.0.1/$1"; printf "AMQP\x00\x00\x09\x01" >&3; head -c 1 <&3 | od -An -tx1' \
    _ "$1" 2>/dev/null | tr -d ' \n')
  [ "$first" = "01" ]
}

# The environment every rabbitmq-server and rabbitmqctl call for node $1 runs with. The wrapper
# /usr/sbin/rabbitmq-server (Debian) switches to the rabbitmq user with `su`, which keeps it.
node_env() {
  local n=$1 dir
  dir=$(node_dir "$n")
  echo "RABBITMQ_CONF_ENV_FILE=$dir/rabbitmq-env.conf"
  echo "RABBITMQ_NODENAME=$(node_name "$n")"
  echo "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1"
  echo "RABBITMQ_NODE_PORT=$(node_port "$n")"
  echo "RABBITMQ_DIST_PORT=$(node_dist_port "$n")"
  echo "RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf"
  echo "RABBITMQ_CONFIG_FILES=$dir/conf.d"
  echo "RABBITMQ_ADVANCED_CONFIG_FILE=$dir/advanced.config"
  echo "RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins"
  echo "RABBITMQ_MNESIA_BASE=$dir/mnesia"
  echo "RABBITMQ_LOG_BASE=$dir/log"
  echo "RABBITMQ_PID_FILE=$(node_pid_file "$n")"
  echo "RABBITMQ_MOTD_FILE=$dir/motd"
}

# run_as_node NODE COMMAND ARGS...: COMMAND (rabbitmq-server, rabbitmqctl, ...) with the node's
# environment, as root or through sudo, killed (with its children) after the deadline.
run_as_node() {
  local n=$1; shift
  local env_args=()
  mapfile -t env_args < <(node_env "$n")
  timeout "$DEADLINE_SECS" $SUDO env "${env_args[@]}" "$@"
}
ctl() { local n=$1; shift; run_as_node "$n" rabbitmqctl -q -n "$(node_name "$n")" "$@"; }

require_rabbitmq() {
  command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/sbin/rabbitmq-server ] \
    || die "rabbitmq-server is not installed: run deploy/local/services.sh first (it installs Debian's rabbitmq-server)"
  export PATH="$PATH:/usr/sbin"
  id "$RUN_USER" >/dev/null 2>&1 || die "user $RUN_USER missing: is rabbitmq-server installed from Debian packages?"
}

# The OS pid of node $1's Erlang VM, or nothing when it does not run. Read from the pid file and
# checked against the process's environment, so that a stale pid file, or a pid reused by
# another process, does not count.
runs_node() {
  $SUDO cat "/proc/$1/environ" 2>/dev/null | tr '\0' '\n' | grep -x "RABBITMQ_NODENAME=$(node_name "$2")" >/dev/null
}
node_pid() {
  local n=$1 pid
  pid=$($SUDO cat "$(node_pid_file "$n")" 2>/dev/null | tr -dc '0-9') || true
  if [ -n "$pid" ] && runs_node "$pid" "$n"; then
    echo "$pid"
    return
  fi
  # No pid file yet (early boot): look for the VM among the rabbitmq user's beam processes.
  local p
  for p in $(pgrep -u "$RUN_USER" beam.smp 2>/dev/null); do
    if runs_node "$p" "$n"; then
      echo "$p"
      return
    fi
  done
}

# wait_for DESCRIPTION COMMAND...: polls COMMAND every second until it succeeds or the deadline.
wait_for() {
  local what=$1; shift
  local start=$SECONDS
  until "$@" >/dev/null 2>&1; do
    if [ $((SECONDS - start)) -ge "$DEADLINE_SECS" ]; then
      die "$what not ready after ${DEADLINE_SECS}s (see $CLUSTER_DIR/c*/log/)"
    fi
    sleep 1
  done
  say "$what ready after $((SECONDS - start))s"
}

# Writes node $1's configuration, environment and plugin files (every start, so that changes to
# this script or PAYSYNC_CLUSTER_EXTRA_CONF apply at the next start of the node).
write_node_files() {
  local n=$1 dir
  dir=$(node_dir "$n")
  $SUDO mkdir -p "$dir/mnesia" "$dir/log" "$dir/conf.d"
  {
    echo "# generated by deploy/local/cluster.sh; rewritten at every start"
    echo "listeners.tcp.1 = 127.0.0.1:$(node_port "$n")"
    echo "listeners.ssl = none"
    echo "cluster_name = paysync-cluster"
    if [ -n "$EXTRA_CONF" ]; then
      echo "# from $EXTRA_CONF"
      cat "$EXTRA_CONF"
    fi
  } | $SUDO tee "$dir/rabbitmq.conf" >/dev/null
  # Sourced by the rabbitmq-server script instead of /etc/rabbitmq/rabbitmq-env.conf: epmd and
  # the distribution listen on loopback only, like the default node's.
  printf '%s\n' "# generated by deploy/local/cluster.sh" "ERL_EPMD_ADDRESS=127.0.0.1" \
    "SERVER_ADDITIONAL_ERL_ARGS=\"-kernel inet_dist_use_interface {127,0,0,1}\"" \
    | $SUDO tee "$dir/rabbitmq-env.conf" >/dev/null
  echo "[]." | $SUDO tee "$dir/enabled_plugins" >/dev/null
  $SUDO touch "$CLUSTER_DIR/$MARKER"
  $SUDO chown -R "$RUN_USER:$RUN_USER" "$CLUSTER_DIR"
}

start_node() {
  local n=$1 pid
  pid=$(node_pid "$n")
  if [ -n "$pid" ]; then
    say "$(node_name "$n"): already running (pid $pid, port $(node_port "$n"))"
    return
  fi
  if port_open "$(node_port "$n")"; then
    die "port $(node_port "$n") is taken by another process: set PAYSYNC_CLUSTER_BASE_PORT"
  fi
  if port_open "$(node_dist_port "$n")"; then
    die "distribution port $(node_dist_port "$n") is taken: set PAYSYNC_CLUSTER_DIST_BASE_PORT"
  fi
  write_node_files "$n"
  say "$(node_name "$n"): starting on 127.0.0.1:$(node_port "$n") (data $(node_dir "$n"))"
  run_as_node "$n" rabbitmq-server -detached >>"$(cli_log "$n")" 2>&1 \
    || die "$(node_name "$n"): rabbitmq-server -detached failed (see $(cli_log "$n"))"
}

node_answers() { amqp_answers "$(node_port "$1")"; }

# The names in a JSON array field of `rabbitmqctl cluster_status --formatter json`.
status_field() {
  sed -n "s/.*\"$1\":\[\([^]]*\)\].*/\1/p" | tr -d '"' | tr ',' '\n'
}
cluster_json() { ctl "$1" cluster_status --formatter json 2>/dev/null; }

all_running() {
  local running n
  running=$(cluster_json c1 | status_field running_nodes) || return 1
  for n in "${NODES[@]}"; do
    grep -qx "$(node_name "$n")" <<<"$running" || return 1
  done
}

join_node() {
  local n=$1 json
  json=$(cluster_json c1) || die "$(node_name c1): rabbitmqctl cluster_status failed"
  if status_field disk_nodes <<<"$json" | grep -x "$(node_name "$n")" >/dev/null; then
    say "$(node_name "$n"): already a member of the cluster"
    return
  fi
  say "$(node_name "$n"): joining $(node_name c1)"
  # force_reset: the node may remember an older cluster (e.g. after c1 alone was wiped).
  local step
  for step in stop_app force_reset "join_cluster $(node_name c1)" start_app; do
    # shellcheck disable=SC2086 # step is a command and its argument
    ctl "$n" $step >>"$(cli_log "$n")" 2>&1 \
      || die "$(node_name "$n"): rabbitmqctl $step failed (see $(cli_log "$n") and $(node_dir "$n")/log/)"
  done
}

cmd_start() {
  require_rabbitmq
  local start=$SECONDS n
  # Start all the nodes at once: a node that restarts with cluster data waits for its peers.
  for n in "${NODES[@]}"; do start_node "$n"; done
  for n in "${NODES[@]}"; do wait_for "$(node_name "$n") AMQP on 127.0.0.1:$(node_port "$n")" node_answers "$n"; done
  for n in c2 c3; do join_node "$n"; done
  wait_for "cluster (c1 lists c1, c2, c3 running)" all_running
  for n in "${NODES[@]}"; do node_answers "$n" || die "$(node_name "$n") stopped answering the AMQP handshake"; done
  say "ready after $((SECONDS - start))s: $(all_urls)"
}

stop_node() {
  local n=$1 pid start=$SECONDS
  pid=$(node_pid "$n")
  if [ -z "$pid" ]; then
    say "$(node_name "$n"): not running"
    return
  fi
  say "$(node_name "$n"): stopping (pid $pid)"
  ctl "$n" stop >/dev/null 2>&1 || true
  while $SUDO kill -0 "$pid" 2>/dev/null; do
    if [ $((SECONDS - start)) -ge "$DEADLINE_SECS" ]; then
      say "$(node_name "$n"): still running after ${DEADLINE_SECS}s: killing pid $pid"
      $SUDO kill -KILL "$pid" 2>/dev/null || true
      sleep 1
      $SUDO kill -0 "$pid" 2>/dev/null && die "$(node_name "$n"): pid $pid survives SIGKILL"
      break
    fi
    sleep 1
  done
  say "$(node_name "$n"): stopped after $((SECONDS - start))s"
}

cmd_stop() {
  local wipe=${1:-} n
  case $wipe in
    "" | --wipe) ;;
    *) die "unknown option '$wipe' (expected --wipe)" ;;
  esac
  require_rabbitmq
  for n in c3 c2 c1; do stop_node "$n"; done
  if [ "$wipe" = "--wipe" ]; then
    if [ -d "$CLUSTER_DIR" ]; then
      [ -f "$CLUSTER_DIR/$MARKER" ] || die "$CLUSTER_DIR has no $MARKER file: not deleting a directory this script did not create"
      say "deleting $CLUSTER_DIR"
      $SUDO rm -rf -- "$CLUSTER_DIR"
    else
      say "$CLUSTER_DIR already absent"
    fi
  fi
}

cmd_status() {
  local n pid state
  for n in "${NODES[@]}"; do
    pid=$(node_pid "$n")
    if [ -z "$pid" ]; then
      state=down
      pid=-
    elif node_answers "$n"; then
      state=running
    else
      state="up, not answering AMQP"
    fi
    say "$(node_name "$n"): $state, port $(node_port "$n"), pid $pid"
  done
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop "${2:-}" ;;
  reset) cmd_stop --wipe ;;
  status) cmd_status ;;
  pid)
    [ -n "${2:-}" ] || die "usage: cluster.sh pid c1|c2|c3"
    node_index "$2" >/dev/null
    pid=$(node_pid "$2")
    [ -n "$pid" ] || die "$(node_name "$2") is not running"
    echo "$pid"
    ;;
  urls) all_urls ;;
  *) die "usage: cluster.sh start | stop [--wipe] | reset | status | pid c1|c2|c3 | urls" ;;
esac
