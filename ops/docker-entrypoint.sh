#!/bin/sh
# Container entrypoint: prepare the writable directories, wait for MySQL when the
# database is MySQL, then hand the process over to `tlink-push <subcommand>` with exec
# (so it is PID 1 and gets the container's signals).
#
#   docker run IMAGE                 -> tlink-push serve   (the image's CMD)
#   docker run IMAGE verify          -> tlink-push verify
#   docker run IMAGE --help          -> tlink-push --help  (options go to tlink-push)
#   docker run IMAGE sh              -> sh                 (anything else runs as is)
#
# Only subcommands get the directories and the wait: a debugging shell must start even
# when a volume is not writable or the database is down.
#
# Environment: SYNC_LOG_DIR (/app/logs), DATABASE_URL, DB_WAIT_SECONDS (60).
set -eu

say() {
    printf 'entrypoint: %s\n' "$*" >&2
}

die() {
    say "$*"
    exit 1
}

python_bin() {
    command -v python3 || command -v python || die "no python3 on PATH"
}

make_dir() {
    [ -d "$1" ] && return 0
    mkdir -p "$1" 2>/dev/null \
        || die "cannot create directory $1 (is the volume writable by uid $(id -u)?)"
}

sqlite_dir() {
    # sqlite:///data/tlink.db -> data ; sqlite:////abs/tlink.db -> /abs
    path=${1#sqlite:///}
    path=${path%%\?*}
    dirname "$path"
}

prepare_dirs() {
    make_dir "${SYNC_LOG_DIR:-/app/logs}"
    make_dir data
    case "${DATABASE_URL:-}" in
        sqlite:///*) make_dir "$(sqlite_dir "$DATABASE_URL")" ;;
    esac
    make_dir instance/certs
}

mysql_address() {
    # Prints "host port" of a mysql:// URL; fails with a message naming DATABASE_URL.
    "$PY" -c '
import sys
from urllib.parse import urlsplit
try:
    url = urlsplit(sys.argv[1])
    host, port = url.hostname, url.port or 3306
except ValueError as exc:
    sys.exit(f"entrypoint: DATABASE_URL is not a valid URL: {exc}")
if not host:
    sys.exit("entrypoint: DATABASE_URL has no host to wait for")
print(host, port)
' "$1"
}

tcp_open() {
    "$PY" -c '
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
except OSError as exc:
    print(exc)
    sys.exit(1)
' "$1" "$2"
}

wait_for_mysql() {
    wait_max=${DB_WAIT_SECONDS:-60}
    case "$wait_max" in
        '' | *[!0-9]*) die "DB_WAIT_SECONDS must be a whole number of seconds, got '$wait_max'" ;;
    esac
    address=$(mysql_address "$1") || exit 1
    host=${address% *}
    port=${address##* }
    start=$(date +%s)
    attempt=1
    while ! problem=$(tcp_open "$host" "$port"); do
        elapsed=$(($(date +%s) - start))
        if [ "$elapsed" -ge "$wait_max" ]; then
            die "MySQL at $host:$port did not accept connections within ${wait_max}s ($problem); giving up"
        fi
        say "waiting for MySQL at $host:$port (attempt $attempt, ${elapsed}s of ${wait_max}s): $problem"
        attempt=$((attempt + 1))
        sleep 2
    done
    say "MySQL at $host:$port accepts connections"
}

[ "$#" -gt 0 ] || set -- serve

case "$1" in
    serve | replay | rebuild | verify | prune | sync) run_app=yes ;;
    -*) set -- tlink-push "$@"; run_app=no ;;
    *) run_app=no ;;
esac

if [ "$run_app" = yes ]; then
    prepare_dirs
    PY=$(python_bin)
    case "${DATABASE_URL:-}" in
        mysql://* | mysql+*://* | mariadb://*) wait_for_mysql "$DATABASE_URL" ;;
    esac
    exec tlink-push "$@"
fi

exec "$@"
