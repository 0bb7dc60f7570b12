#!/usr/bin/env bash
# Makes sure the local RabbitMQ (127.0.0.1:5672) and PostgreSQL (127.0.0.1:5432) accept
# connections: installs them from Debian packages when absent, starts them when stopped, waits
# until they are ready (with a deadline) and creates the `paysync` database. Idempotent: run it
# as often as you like. One line per action; non-zero exit with a reason when it cannot.
#
# For development machines and CI only: on a fresh PostgreSQL install it turns on trust
# authentication for loopback connections, which the local defaults rely on.
set -euo pipefail

DEADLINE_SECS=${PAYSYNC_SERVICES_DEADLINE_SECS:-120}
DB_NAME=${PAYSYNC_SERVICES_DB_NAME:-paysync}

say() { echo "services: $*"; }
die() { echo "services: error: $*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || die "not root and no sudo: cannot install or start services"
  SUDO="sudo"
fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install $* yourself (this script knows Debian only)"
  if [ "$APT_UPDATED" -eq 0 ]; then
    say "apt-get update"
    $SUDO apt-get update -qq >/dev/null || die "apt-get update failed"
    APT_UPDATED=1
  fi
  say "installing $* from Debian packages"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "apt-get install $* failed"
}

# wait_for DESCRIPTION COMMAND...: polls COMMAND every second until it succeeds or the deadline.
wait_for() {
  local what=$1; shift
  local start=$SECONDS
  until "$@" >/dev/null 2>&1; do
    if [ $((SECONDS - start)) -ge "$DEADLINE_SECS" ]; then
      die "$what not ready after ${DEADLINE_SECS}s"
    fi
    sleep 1
  done
  say "$what ready after $((SECONDS - start))s"
}

AMQP_PORT=${PAYSYNC_SERVICES_AMQP_PORT:-5672}
AMQP_HANDSHAKE_SECS=${PAYSYNC_SERVICES_AMQP_HANDSHAKE_SECS:-10}

# amqp_answers: the broker answers an AMQP 0-9-1 protocol header with a frame (Connection.Start,
# frame type 1) within AMQP_HANDSHAKE_SECS. A broker can accept TCP and never answer: RabbitMQ
# 3.10.8 has been seen so after its quorum-queue segment writer crashed.
amqp_answers() {
  local first
  first=$(timeout "$AMQP_HANDSHAKE_SECS" bash -c \
    'exec 3<>"/dev/tcp/127.0.0.1/$1"; printf "AMQP\x00\x00\x09\x01" >&3; head -c 1 <&3 | od -An -tx1' \
    _ "$AMQP_PORT" 2>/dev/null | tr -d ' \n')
  [ "$first" = "01" ]
}

rabbit_ready() { port_open "$AMQP_PORT" && amqp_answers && $SUDO rabbitmqctl -q status >/dev/null 2>&1; }

# stop_rabbitmq WHY: stops the broker on $AMQP_PORT so that it is started again below; when
# `rabbitmqctl stop` fails within 60 s, kills the process listening on the port (and only it: the
# local cluster's nodes of deploy/local/cluster.sh run beside it).
stop_rabbitmq() {
  say "rabbitmq: $1: restarting it"
  if ! timeout 60 $SUDO rabbitmqctl stop >/dev/null 2>&1; then
    local pid
    pid=$($SUDO ss -Hltnp "sport = :$AMQP_PORT" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2)
    [ -n "$pid" ] && $SUDO kill -KILL "$pid" 2>/dev/null || true
  fi
  local start=$SECONDS
  while port_open "$AMQP_PORT"; do
    [ $((SECONDS - start)) -ge "$DEADLINE_SECS" ] && die "rabbitmq: still listening after stop; restart it by hand"
    sleep 1
  done
}

install_rabbitmq() {
  if ! command -v rabbitmq-server >/dev/null 2>&1 && [ ! -x /usr/sbin/rabbitmq-server ]; then
    apt_install rabbitmq-server
  fi
}

ensure_rabbitmq() {
  if port_open "$AMQP_PORT"; then
    if amqp_answers; then
      say "rabbitmq: already accepting connections on 127.0.0.1:$AMQP_PORT"
      return
    fi
    # Wedged: accepts connections but not the handshake.
    stop_rabbitmq "accepts TCP on 127.0.0.1:$AMQP_PORT but answers no AMQP handshake in ${AMQP_HANDSHAKE_SECS}s"
  fi
  install_rabbitmq
  say "rabbitmq: starting (rabbitmq-server -detached)"
  $SUDO rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_for "rabbitmq" rabbit_ready
}

pg_version() { ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1; }
pg_query() { psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -w -tAc "$1"; }

ensure_postgres() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    apt_install postgresql postgresql-client
  fi
  local version
  version=$(pg_version)
  [ -n "$version" ] || die "postgresql is installed but has no cluster under /etc/postgresql"
  if port_open 5432; then
    say "postgresql: already accepting connections on 127.0.0.1:5432"
  else
    if ! $SUDO pg_lsclusters -h 2>/dev/null | grep -q "^$version *main "; then
      say "postgresql: creating cluster $version/main"
      $SUDO pg_createcluster "$version" main >/dev/null || die "pg_createcluster $version main failed"
    fi
    say "postgresql: starting cluster $version/main"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null \
      || $SUDO pg_ctlcluster "$version" main start \
      || die "pg_ctlcluster $version main start failed (see /var/log/postgresql/)"
    wait_for "postgresql" pg_isready -h 127.0.0.1 -p 5432 -q
  fi
  if ! pg_query "select 1" >/dev/null 2>&1; then
    local hba="/etc/postgresql/$version/main/pg_hba.conf"
    say "postgresql: enabling trust auth for user postgres on loopback ($hba)"
    $SUDO sed -i '1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' "$hba"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main reload 2>/dev/null \
      || $SUDO pg_ctlcluster "$version" main reload
    wait_for "postgresql trust auth" pg_query "select 1"
  fi
  if [ "$(pg_query "select 1 from pg_database where datname = '$DB_NAME'")" != "1" ]; then
    say "postgresql: creating database $DB_NAME"
    pg_query "create database \"$DB_NAME\"" >/dev/null || die "cannot create database $DB_NAME"
  else
    say "postgresql: database $DB_NAME exists"
  fi
}

# promtool and prometheus (Debian's `prometheus` package) check and exercise the alert rules
# and the scrape in the tests.
ensure_tools() {
  if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
    say "tools: promtool and prometheus present"
    return
  fi
  apt_install prometheus
  # The package may start its own service; the tests run their own instances.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
  elif [ -x /etc/init.d/prometheus ]; then
    $SUDO /etc/init.d/prometheus stop >/dev/null 2>&1 || true
  fi
  command -v promtool >/dev/null 2>&1 || die "promtool missing after installing prometheus"
}

# Debian's `chromium` and `chromium-driver` (chromedriver) run the console's browser tests: the
# testkit's `browser` module drives a headless Chromium through chromedriver.
ensure_browser() {
  if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    say "tools: chromium and chromedriver present"
    return
  fi
  apt_install chromium chromium-driver
  [ -x /usr/bin/chromedriver ] || die "chromedriver missing after installing chromium-driver"
}

# `just` runs the developer recipes (`just bench`, `just test`, ...). Not in Debian 12, so it
# comes from crates.io, built with the machine's Rust toolchain (about a minute, once).
ensure_just() {
  if command -v just >/dev/null 2>&1; then
    say "tools: just present"
    return
  fi
  command -v cargo >/dev/null 2>&1 || die "cargo is needed to install just"
  say "tools: installing just from crates.io (cargo install --locked just)"
  cargo install --locked --quiet just || die "cargo install just failed"
  command -v just >/dev/null 2>&1 || die "just installed but not on PATH (add ~/.cargo/bin)"
}

# A local SMTP catcher for `paysync up` (no PAYSYNC_SMTP_URL): Debian's aiosmtpd, listening on
# 127.0.0.1:1025 and writing every message it receives into a maildir, so a newcomer sees the
# receipts the dispatcher sends. Not used by the tests (they run their own fake per test).
MAILDIR="${PAYSYNC_LOCAL_MAILDIR:-/tmp/paysync-mail}"
ensure_mail_catcher() {
  if port_open 1025; then
    say "mail catcher: listening on 127.0.0.1:1025 (maildir $MAILDIR)"
    return
  fi
  # Debian's interpreter, where the package installs (a pyenv or venv python3 may shadow it).
  local py=/usr/bin/python3
  "$py" -c 'import aiosmtpd' 2>/dev/null || apt_install python3-aiosmtpd
  mkdir -p "$MAILDIR/tmp" "$MAILDIR/new" "$MAILDIR/cur"
  nohup "$py" -m aiosmtpd -n -l 127.0.0.1:1025 -c aiosmtpd.handlers.Mailbox "$MAILDIR" \
    >/tmp/paysync-mail-catcher.log 2>&1 &
  wait_for "mail catcher" port_open 1025
  say "mail catcher: listening on 127.0.0.1:1025 (maildir $MAILDIR)"
}

# The test CA and TLS on both servers.
# shellcheck source=deploy/local/tls.sh
. "$(dirname "$0")/tls.sh"

# An independent Standard Webhooks implementation, the reference Python library from PyPI, in a
# venv of its own: the tests check paysync's outbound signatures with it (and it with them).
PYTOOLS="${PAYSYNC_LOCAL_PYTOOLS:-/var/lib/paysync-local-tools/venv}"
STANDARDWEBHOOKS_VERSION=1.3.0
ensure_standardwebhooks() {
  if "$PYTOOLS/bin/python" -c 'import standardwebhooks' 2>/dev/null; then
    say "tools: standardwebhooks (Python) present in $PYTOOLS"
    return
  fi
  local py=/usr/bin/python3
  [ -x "$py" ] || apt_install python3
  if ! $SUDO "$py" -m venv "$PYTOOLS" >/dev/null 2>&1; then
    apt_install python3-venv
    $SUDO "$py" -m venv "$PYTOOLS" >/dev/null || die "cannot make a venv in $PYTOOLS"
  fi
  say "tools: installing standardwebhooks==$STANDARDWEBHOOKS_VERSION from PyPI into $PYTOOLS"
  $SUDO "$PYTOOLS/bin/pip" install -q "standardwebhooks==$STANDARDWEBHOOKS_VERSION" \
    || die "pip install standardwebhooks failed"
}

# `services.sh --check-amqp`: only tells whether the broker on PAYSYNC_SERVICES_AMQP_PORT answers
# the AMQP handshake (exit 0) or not (exit 1), and changes nothing.
if [ "${1:-}" = "--check-amqp" ]; then
  if amqp_answers; then
    say "rabbitmq: 127.0.0.1:$AMQP_PORT answers the AMQP handshake"
    exit 0
  fi
  say "rabbitmq: 127.0.0.1:$AMQP_PORT answers no AMQP handshake in ${AMQP_HANDSHAKE_SECS}s"
  exit 1
fi

ensure_test_ca
install_rabbitmq # the TLS configuration needs its user and directories
ensure_rabbitmq_tls_config
stop_rabbitmq_for_tls
ensure_rabbitmq
wait_for "rabbitmq TLS listener (127.0.0.1:$AMQPS_PORT)" amqps_ready
ensure_postgres
ensure_postgres_tls
ensure_tools
ensure_browser
ensure_just
ensure_standardwebhooks
ensure_mail_catcher
say "all services up"
