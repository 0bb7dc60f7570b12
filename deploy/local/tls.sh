# Sourced by deploy/local/services.sh: a local test CA, and TLS on the local RabbitMQ and
# PostgreSQL signed by it, so the tests can speak amqps:// and sslmode=verify-full the way
# production does against managed services. For development machines and CI only.
#
# In $TLS_DIR (PAYSYNC_LOCAL_TLS_DIR, default /var/lib/paysync-local-tls), readable by all:
#   ca.pem            the test CA (10 years) that signed server.pem and client.pem
#   server.pem        the servers' certificate: localhost and 127.0.0.1, extended key usage serverAuth
#   client.pem/.key   a client certificate (clientAuth) for the optional client-certificate tests
#   other-ca.pem      a second CA: "the wrong CA" in the tests
#   other-client.pem/.key  a client certificate signed by the other CA: a client to refuse
# Keys are test material, readable by all but the CA's; the servers get their own copies of
# server.key, owned by the user each runs as, with mode 0600.

TLS_DIR=${PAYSYNC_LOCAL_TLS_DIR:-/var/lib/paysync-local-tls}
AMQPS_PORT=${PAYSYNC_SERVICES_AMQPS_PORT:-5671}
RABBIT_CONF=${PAYSYNC_SERVICES_RABBITMQ_CONF:-/etc/rabbitmq/rabbitmq.conf}
TLS_BEGIN="# paysync local TLS listener (written by services.sh): begin"
TLS_END="# paysync local TLS listener (written by services.sh): end"

# openssl_new_key FILE: a P-256 key (PKCS#8 PEM).
openssl_new_key() { $SUDO openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# sign_leaf NAME CN EXTENSIONS [CA]: NAME.key and NAME.pem signed by CA (default: the test CA,
# `ca`) for 825 days.
sign_leaf() {
  local name=$1 cn=$2 ext=$3 ca=${4:-ca} csr
  csr=$(mktemp)
  openssl_new_key "$TLS_DIR/$name.key" || die "tls: cannot make the $name key"
  $SUDO openssl req -new -key "$TLS_DIR/$name.key" -subj "/CN=$cn" -out "$csr" 2>/dev/null \
    || die "tls: cannot make the $name request"
  $SUDO openssl x509 -req -in "$csr" -CA "$TLS_DIR/$ca.pem" -CAkey "$TLS_DIR/$ca.key" \
    -CAcreateserial -days 825 -sha256 -extfile <(printf '%s\n' "$ext") -out "$TLS_DIR/$name.pem" 2>/dev/null \
    || die "tls: cannot sign the $name certificate"
  rm -f "$csr"
}

# ensure_test_ca: makes the CA and the certificates once; again when one expires within 30 days.
ensure_test_ca() {
  command -v openssl >/dev/null 2>&1 || apt_install openssl
  local fresh=1 f
  for f in ca.pem ca.key server.pem server.key client.pem client.key other-ca.pem other-client.pem other-client.key; do
    [ -s "$TLS_DIR/$f" ] || fresh=0
  done
  if [ "$fresh" -eq 1 ]; then
    for f in ca.pem server.pem client.pem other-ca.pem other-client.pem; do
      openssl x509 -in "$TLS_DIR/$f" -noout -checkend 2592000 >/dev/null 2>&1 || fresh=0
    done
  fi
  if [ "$fresh" -eq 1 ]; then
    say "tls: test CA and certificates present in $TLS_DIR"
    return
  fi
  say "tls: making a test CA and server and client certificates in $TLS_DIR"
  $SUDO mkdir -p "$TLS_DIR"
  $SUDO chmod 755 "$TLS_DIR"
  openssl_new_key "$TLS_DIR/ca.key" || die "tls: cannot make the CA key"
  $SUDO openssl req -x509 -new -key "$TLS_DIR/ca.key" -subj "/CN=paysync local test CA" -days 3650 \
    -sha256 -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$TLS_DIR/ca.pem" 2>/dev/null || die "tls: cannot make the CA certificate"
  sign_leaf server localhost "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1"
  sign_leaf client paysync-test-client "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
  # The other CA signs one client certificate (a client the servers must refuse); its key is
  # then thrown away.
  openssl_new_key "$TLS_DIR/other-ca.key" || die "tls: cannot make the other CA key"
  $SUDO openssl req -x509 -new -key "$TLS_DIR/other-ca.key" -subj "/CN=paysync unrelated test CA" -days 3650 \
    -sha256 -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$TLS_DIR/other-ca.pem" 2>/dev/null || die "tls: cannot make the other CA"
  sign_leaf other-client paysync-unknown-client "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth" other-ca
  $SUDO rm -f "$TLS_DIR/other-ca.key" "$TLS_DIR/other-ca.srl"
  # Test material for this machine's tests (the testkit's https proxy reads server.key): all
  # readable but the CA key.
  $SUDO chmod 644 "$TLS_DIR"/*.pem "$TLS_DIR"/*.key
  $SUDO chmod 600 "$TLS_DIR/ca.key"
}

# ensure_rabbitmq_tls_config: a TLS listener on 127.0.0.1:$AMQPS_PORT in rabbitmq.conf (between
# marker lines, replaced when it changes). Peer certificates are verified when sent, not required.
# Sets RABBIT_TLS_CHANGED=1 when the file changed: the broker must then be restarted.
ensure_rabbitmq_tls_config() {
  local owner=root
  id rabbitmq >/dev/null 2>&1 && owner=rabbitmq
  if ! $SUDO cmp -s "$TLS_DIR/server.key" "$TLS_DIR/rabbitmq/server.key"; then
    $SUDO mkdir -p "$TLS_DIR/rabbitmq"
    $SUDO cp "$TLS_DIR/server.key" "$TLS_DIR/rabbitmq/server.key"
    $SUDO chown -R "$owner" "$TLS_DIR/rabbitmq"
    $SUDO chmod 700 "$TLS_DIR/rabbitmq"
    $SUDO chmod 600 "$TLS_DIR/rabbitmq/server.key"
    RABBIT_TLS_CHANGED=1
  fi
  local block
  block="$TLS_BEGIN
listeners.ssl.default = 127.0.0.1:$AMQPS_PORT
ssl_options.cacertfile = $TLS_DIR/ca.pem
ssl_options.certfile = $TLS_DIR/server.pem
ssl_options.keyfile = $TLS_DIR/rabbitmq/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
$TLS_END"
  $SUDO mkdir -p "$(dirname "$RABBIT_CONF")"
  $SUDO touch "$RABBIT_CONF"
  local current
  current=$(sed -n "/^$TLS_BEGIN\$/,/^$TLS_END\$/p" "$RABBIT_CONF")
  if [ "$current" = "$block" ]; then
    say "rabbitmq: TLS listener configured on 127.0.0.1:$AMQPS_PORT"
    return
  fi
  say "rabbitmq: configuring a TLS listener on 127.0.0.1:$AMQPS_PORT ($RABBIT_CONF)"
  local tmp
  tmp=$(mktemp)
  sed "/^$TLS_BEGIN\$/,/^$TLS_END\$/d" "$RABBIT_CONF" >"$tmp"
  printf '%s\n' "$block" >>"$tmp"
  $SUDO cp "$tmp" "$RABBIT_CONF"
  rm -f "$tmp"
  RABBIT_TLS_CHANGED=1
}

# stop_rabbitmq_for_tls: a running broker reads its listeners at start only.
stop_rabbitmq_for_tls() {
  [ "${RABBIT_TLS_CHANGED:-0}" -eq 1 ] && port_open "$AMQP_PORT" || return 0
  stop_rabbitmq "the TLS listener is new or changed"
}

# ensure_postgres_tls: the server certificate signed by the test CA (ALTER SYSTEM, then a reload:
# PostgreSQL reads its certificate again on reload, no restart).
ensure_postgres_tls() {
  local key="$TLS_DIR/postgres/server.key"
  local renewed=0
  if ! $SUDO cmp -s "$TLS_DIR/server.key" "$key"; then
    renewed=1
    $SUDO mkdir -p "$TLS_DIR/postgres"
    $SUDO cp "$TLS_DIR/server.key" "$key"
    $SUDO chown -R postgres "$TLS_DIR/postgres"
    $SUDO chmod 700 "$TLS_DIR/postgres"
    $SUDO chmod 600 "$key"
  fi
  if [ "$(pg_query "show ssl")" = "on" ] && [ "$(pg_query "show ssl_cert_file")" = "$TLS_DIR/server.pem" ] \
    && [ "$(pg_query "show ssl_key_file")" = "$key" ] && [ "$renewed" -eq 0 ]; then
    say "postgresql: TLS on with the test CA's certificate"
    return
  fi
  say "postgresql: turning TLS on with the test CA's certificate (ALTER SYSTEM, reload)"
  pg_query "alter system set ssl_cert_file = '$TLS_DIR/server.pem'" >/dev/null || die "postgresql: cannot set ssl_cert_file"
  pg_query "alter system set ssl_key_file = '$key'" >/dev/null || die "postgresql: cannot set ssl_key_file"
  pg_query "alter system set ssl = on" >/dev/null || die "postgresql: cannot set ssl"
  [ "$(pg_query "select pg_reload_conf()")" = "t" ] || die "postgresql: reload failed"
  wait_for "postgresql TLS" pg_tls_ready
}

pg_tls_ready() {
  [ "$(PGSSLMODE=verify-full PGSSLROOTCERT="$TLS_DIR/ca.pem" psql "host=localhost port=5432 user=postgres dbname=postgres" -w -tAc "select ssl from pg_stat_ssl where pid = pg_backend_pid()")" = "t" ]
}

amqps_ready() { port_open "$AMQPS_PORT"; }
