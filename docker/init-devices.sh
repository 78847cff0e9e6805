#!/bin/sh
# docker-compose.yml's `init-devices` service: the MQTT user `device` that the simulators and the
# Pi program log in as, since the broker refuses anonymous clients from the network. Runs as
# root in the mqtt2es image (for `mqtt2es passwd`), with the `secrets` volume on /secrets
# (SECRETS_DIR elsewhere: tests/it/packaging.rs runs this script as written):
#
#   /secrets/devices/device-password   the password, readable by the simulators (uid 10001) and
#                                      the Pi program (uid 65534)
#   /secrets/mqtt2es/passwd            broker.auth.password_file (Mosquitto's format), mqtt2es only
#
# The password is made once and kept; the password file is written again from it each time.
set -eu

secrets="${SECRETS_DIR:-/secrets}"

umask 077
mkdir -p "$secrets/devices" "$secrets/mqtt2es"
if [ ! -s "$secrets/devices/device-password" ]; then
    tr -dc 'A-Za-z0-9' </dev/urandom | head -c 24 >"$secrets/devices/device-password"
fi
# -b takes the password on the command line: only this one-shot container's processes see it.
mqtt2es passwd -c -b "$secrets/mqtt2es/passwd" device "$(cat "$secrets/devices/device-password")"

# Who reads what: mqtt2es and its simulators run as 10001:10001, the Pi program as 65534:65534.
# (Not root, e.g. a test run by a user: the files stay that user's.)
if [ "$(id -u)" = 0 ]; then
    chown 10001:65534 "$secrets/devices/device-password"
    chmod 440 "$secrets/devices/device-password"
    chmod 755 "$secrets/devices"
    chown 10001:10001 "$secrets/mqtt2es" "$secrets/mqtt2es/passwd"
    chmod 700 "$secrets/mqtt2es"
    chmod 400 "$secrets/mqtt2es/passwd"
fi
echo "done: MQTT user device, password in /secrets/devices/device-password"
