#!/bin/sh
# The stand-in PostgreSQL's entrypoint (docker/local/postgres.Containerfile): on an empty data directory,
# create the cluster with POSTGRES_USER/POSTGRES_PASSWORD, the database POSTGRES_DB and run the scripts in
# /docker-entrypoint-initdb.d once, as the official image does; then serve on 5432 with password auth.
set -eu
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
USER_NAME=${POSTGRES_USER:-postgres}
DB_NAME=${POSTGRES_DB:-$USER_NAME}

if [ "$(id -u)" = 0 ]; then  # a fresh volume is root's: hand it to postgres, then drop root
  mkdir -p "$PGDATA" /var/run/postgresql
  chown postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb -D "$PGDATA" -U "$USER_NAME" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  # The set-up server listens on a private socket only, so that pg_isready (the healthcheck) passes
  # once the real server runs, not before.
  init_socket=$(mktemp -d)
  export PGHOST="$init_socket"
  pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -c unix_socket_directories=$init_socket" -w start >/dev/null
  if [ "$DB_NAME" != postgres ]; then
    psql -v ON_ERROR_STOP=1 -U "$USER_NAME" -d postgres -c "CREATE DATABASE \"$DB_NAME\"" >/dev/null
  fi
  for script in /docker-entrypoint-initdb.d/*.sql; do
    [ -e "$script" ] && psql -v ON_ERROR_STOP=1 -U "$USER_NAME" -d "$DB_NAME" -f "$script"
  done
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  unset PGHOST
fi
exec postgres -D "$PGDATA" -c listen_addresses='*'
