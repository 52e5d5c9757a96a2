#!/usr/bin/env bash
# Makes sure the services pentrace's tests need are there: PostgreSQL running
# on 127.0.0.1:5432 (trust auth for local connections), and the mosquitto
# binary (tests start their own brokers on free ports). Installs them from
# Debian's packages when missing; leaves running services alone.
#
# Installing, and configuring and starting PostgreSQL, need root: as root
# this does them itself, otherwise through sudo; without either it says
# what it needs and stops (nothing is needed as root when everything is
# already installed and running).
set -euo pipefail

# as_root WHY COMMAND...: runs COMMAND as root (directly, or through sudo).
as_root() {
    local why=$1
    shift
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        echo "sudo: $why" >&2
        sudo "$@"
    else
        printf '%s\n' \
            "FAILED: $why needs root, and this runs as $(id -un) without sudo." \
            "Run it as root, install sudo, or do it yourself and rerun:" \
            "  PostgreSQL on 127.0.0.1:5432, trust auth for local TCP connections" \
            "  as user postgres; the mosquitto binary; Node.js >= 20 with npm" \
            "  (Debian: apt-get install postgresql mosquitto nodejs npm)." >&2
        exit 1
    fi
}

apt_updated=0
install() {
    if [ "$apt_updated" = 0 ]; then
        as_root "installing $* (apt-get update)" apt-get update -qq
        apt_updated=1
    fi
    as_root "installing $* (apt-get install)" \
        env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pg_ready() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }

if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
    echo "installing PostgreSQL"
    install postgresql
fi
if ! pg_ready; then
    version=$(ls /etc/postgresql | sort -V | tail -1)
    conf=/etc/postgresql/$version/main
    # Tests connect as postgres over TCP without a password.
    if ! as_root "reading $conf/pg_hba.conf" grep -q "pentrace-ci" "$conf/pg_hba.conf"; then
        as_root "allowing local connections in $conf/pg_hba.conf" \
            sed -i '1i host all all 127.0.0.1/32 trust # pentrace-ci\nhost all all ::1/128 trust # pentrace-ci' "$conf/pg_hba.conf"
    fi
    if ! grep -q "^listen_addresses" "$conf/postgresql.conf"; then
        echo "listen_addresses = '127.0.0.1'" \
            | as_root "setting listen_addresses in $conf/postgresql.conf" tee -a "$conf/postgresql.conf" >/dev/null
    fi
    echo "starting PostgreSQL $version"
    as_root "starting PostgreSQL $version" pg_ctlcluster --skip-systemctl-redirect "$version" main start
    for _ in $(seq 1 60); do pg_ready && break; sleep 1; done
fi
pg_ready || { echo "PostgreSQL is not accepting connections on 127.0.0.1:5432" >&2; exit 1; }
echo "PostgreSQL ready: $(psql -h 127.0.0.1 -U postgres -tAc 'select version()' | cut -d' ' -f1-2)"

if ! [ -x /usr/sbin/mosquitto ] && ! command -v mosquitto >/dev/null 2>&1; then
    echo "installing Mosquitto"
    install mosquitto
    # The tests start their own brokers; Debian's service is not needed.
fi
echo "mosquitto: $( (/usr/sbin/mosquitto -h 2>/dev/null || mosquitto -h) | head -1)"

# Node.js >= 20 runs the TimescaleDB test server (tests/timescaledb/). This
# kind of machine ships Node.js 20; Debian 12's own package is 18, so a
# machine without node gets Debian's, and then, as on any machine whose node
# is older than 20, Node.js 20 from the npm registry (the `node` package,
# which brings the binary for this platform), into npm's global prefix
# (/usr/local with Debian's npm), ahead of /usr/bin on PATH.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "installing Node.js"
    install nodejs npm
fi
node_major() { node -p 'process.versions.node.split(".")[0]'; }
if [ "$(node_major)" -lt 20 ]; then
    echo "Node.js $(node --version) is older than 20: installing Node.js 20 (npm install -g node@20)"
    as_root "installing Node.js 20 (npm install -g node@20)" \
        npm install -g --no-audit --no-fund --loglevel=error node@20 >/dev/null
    hash -r
    if [ "$(node_major)" -lt 20 ]; then
        echo "FAILED: node on PATH ($(command -v node)) is still $(node --version);" \
            "Node.js 20 went to $(npm prefix -g)/bin" >&2
        exit 1
    fi
fi
echo "node: $(node --version)"
