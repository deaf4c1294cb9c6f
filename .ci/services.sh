#!/usr/bin/env bash
# Redis and PostgreSQL for the cluster tests (tests/cluster/). Machines of this project run both as local services
# (127.0.0.1:6379; 127.0.0.1:5432, trust auth, user postgres); on a machine without them this installs Debian's
# packages and starts throwaway instances with those addresses (data under /tmp, nothing kept). Never skipped: if a
# service cannot be started, this fails and so does `make test`.
set -euo pipefail
SUDO=$( [ "$(id -u)" = 0 ] || echo sudo )

apt_install() {
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "$@" >/dev/null
}

if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
  command -v redis-server >/dev/null 2>&1 || { echo "installing Debian's redis-server for the cluster tests"; apt_install redis-server; }
  echo "starting a throwaway redis-server on 127.0.0.1:6379"
  redis-server --port 6379 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --logfile /tmp/keyrack-test-redis.log
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && break; sleep 0.1; done
fi

if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$PGBIN" ]; then
    echo "installing Debian's postgresql for the cluster tests"
    apt_install postgresql
    PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  fi
  DIR=/tmp/keyrack-test-pg
  echo "starting a throwaway PostgreSQL on 127.0.0.1:5432 ($DIR)"
  $SUDO rm -rf "$DIR" && $SUDO mkdir -p "$DIR"
  RUN=( )
  if [ "$(id -u)" = 0 ]; then $SUDO chown postgres "$DIR"; RUN=(su postgres -s /bin/bash -c); else RUN=(bash -c); fi
  "${RUN[@]}" "$PGBIN/initdb -D $DIR/data -U postgres --auth=trust >/dev/null"
  "${RUN[@]}" "$PGBIN/pg_ctl -D $DIR/data -l $DIR/log -w -o '-p 5432 -c listen_addresses=127.0.0.1 -k /tmp' start >/dev/null"
fi
