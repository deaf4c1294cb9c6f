#!/usr/bin/env bash
# Runs a command (the test suite) with Redis and PostgreSQL for the cluster tests (tests/cluster/). Machines of this
# project run both as local services (127.0.0.1:6379; 127.0.0.1:5432, trust auth, user postgres); on a machine
# without them this installs Debian's packages and starts throwaway instances with those addresses (data in a fresh
# temporary directory), and stops them and removes their data when the command ends, whatever its outcome. Never
# skipped: if a service cannot be started, this fails and so does `make test`.
#
#   bash .ci/services.sh .venv/bin/pytest        # `make test`
#   bash .ci/services.sh                         # no command: start what is missing and leave it running
set -euo pipefail
SUDO=$( [ "$(id -u)" = 0 ] || echo sudo )
STARTED_REDIS="" PG_DIR="" PGBIN=""

apt_install() {
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "$@" >/dev/null
}
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/bash -c "$1"; else bash -c "$1"; fi; }

stop_started() {
  if [ -n "$STARTED_REDIS" ]; then
    echo "stopping the throwaway redis-server"
    redis-cli -p 6379 shutdown nosave >/dev/null 2>&1 || true
  fi
  if [ -n "$PG_DIR" ]; then
    echo "stopping the throwaway PostgreSQL ($PG_DIR)"
    as_pg "$PGBIN/pg_ctl -D $PG_DIR/data -m fast -w stop >/dev/null" || true
    $SUDO rm -rf "$PG_DIR"
  fi
}

if ! answers 6379; then
  command -v redis-server >/dev/null 2>&1 || { echo "installing Debian's redis-server for the cluster tests"; apt_install redis-server; }
  echo "starting a throwaway redis-server on 127.0.0.1:6379"
  redis-server --port 6379 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --logfile ''
  STARTED_REDIS=1
  for _ in $(seq 100); do answers 6379 && break; sleep 0.1; done
fi

if ! answers 5432; then
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$PGBIN" ]; then
    echo "installing Debian's postgresql for the cluster tests"
    apt_install postgresql
    PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  fi
  PG_DIR=$(mktemp -d -t keyrack-test-pg.XXXXXX)  # unique per run: two runs never share or delete each other's data
  echo "starting a throwaway PostgreSQL on 127.0.0.1:5432 ($PG_DIR)"
  [ "$(id -u)" = 0 ] && chown postgres "$PG_DIR"
  as_pg "$PGBIN/initdb -D $PG_DIR/data -U postgres --auth=trust >/dev/null"
  as_pg "$PGBIN/pg_ctl -D $PG_DIR/data -l $PG_DIR/log -w -o '-p 5432 -c listen_addresses=127.0.0.1 -k $PG_DIR' start >/dev/null"
fi

if [ $# -eq 0 ]; then
  exit 0
fi
trap stop_started EXIT
"$@"
