#!/usr/bin/env bash
# Makes sure the services pentrace's tests need are there: PostgreSQL running
# on 127.0.0.1:5432 (trust auth for local connections), and the mosquitto
# binary (tests start their own brokers on free ports). Installs them from
# Debian's packages when missing; leaves running services alone.
set -euo pipefail

apt_updated=0
install() {
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
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
    if ! grep -q "pentrace-ci" "$conf/pg_hba.conf"; then
        sed -i '1i host all all 127.0.0.1/32 trust # pentrace-ci\nhost all all ::1/128 trust # pentrace-ci' "$conf/pg_hba.conf"
    fi
    grep -q "^listen_addresses" "$conf/postgresql.conf" || echo "listen_addresses = '127.0.0.1'" >> "$conf/postgresql.conf"
    echo "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
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

# Node.js runs the TimescaleDB test server (tests/timescaledb/). This kind
# of machine ships Node.js 20; Debian's own package is older, so a machine
# without node gets Debian's and the check script says if it is too old.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "installing Node.js"
    install nodejs npm
fi
echo "node: $(node --version)"
