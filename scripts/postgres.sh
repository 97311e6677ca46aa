#!/usr/bin/env bash
# A throw-away PostgreSQL cluster on a local port for the store tests.
#   scripts/postgres.sh start   install Debian's postgresql if missing (needs root),
#                               init a cluster under $PGROOT and start it
#   scripts/postgres.sh url     print its SQLAlchemy URL
#   scripts/postgres.sh stop    stop it and delete its files
set -euo pipefail
PGROOT=${PGROOT:-/tmp/scaling-test-pg}
PGPORT=${PGPORT:-55439}
DATA=$PGROOT/data

find_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  command -v initdb >/dev/null 2>&1 && { dirname "$(command -v initdb)"; return 0; }
  return 1
}

as_owner() {  # initdb and postgres refuse to run as root: use the postgres user
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "${1:-}" in
  start)
    if ! BIN=$(find_bin); then
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "postgres.sh: installing Debian's postgresql" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
          || { echo "postgres.sh: could not install postgresql; PostgreSQL tests will be skipped" >&2; exit 0; }
        BIN=$(find_bin)
      else
        echo "postgres.sh: no PostgreSQL found and cannot install it; PostgreSQL tests will be skipped" >&2
        exit 0
      fi
    fi
    [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1 && useradd -r -m postgres
    "$0" stop >/dev/null 2>&1 || true
    mkdir -p "$PGROOT"
    [ "$(id -u)" = 0 ] && chown postgres "$PGROOT"
    as_owner "$BIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 >/dev/null
    as_owner "$BIN/pg_ctl" -D "$DATA" -o "-p $PGPORT -k $PGROOT -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off" \
      -l "$PGROOT/log" -w start >/dev/null
    as_owner "$BIN/createdb" -h 127.0.0.1 -p "$PGPORT" -U postgres scaling_test
    echo "postgresql+psycopg://postgres@127.0.0.1:$PGPORT/scaling_test" > "$PGROOT/url"
    echo "postgres.sh: started on 127.0.0.1:$PGPORT" >&2
    ;;
  url)
    cat "$PGROOT/url" 2>/dev/null || true
    ;;
  stop)
    if [ -d "$DATA" ] && BIN=$(find_bin); then
      as_owner "$BIN/pg_ctl" -D "$DATA" -m immediate stop >/dev/null 2>&1 || true
    fi
    rm -rf "$PGROOT"
    ;;
  *) echo "usage: $0 start|url|stop" >&2; exit 2 ;;
esac
