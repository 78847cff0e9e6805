#!/bin/bash
# docker-compose.yml's `init` service: the Elasticsearch side of "secure with nothing to type",
# as Elastic's own docker-compose example does it. Runs once per `docker compose up`, as root,
# in the Elasticsearch image (for elasticsearch-certutil), working directory
# /usr/share/elasticsearch, with the volumes `certs` on config/certs and `secrets` on /secrets.
# Makes what is missing, keeps what exists (passwords stay the same across `up`s):
#
#   config/certs/ca/ca.crt                       the CA every client trusts (mqtt2es: /certs/ca/ca.crt)
#   config/certs/elasticsearch/elasticsearch.*   the node's certificate (elasticsearch, localhost)
#   /secrets/elastic-password                    the `elastic` superuser (Kibana login, curl)
#   /secrets/kibana_system-password              the user Kibana's server talks to Elasticsearch as
#   /secrets/mqtt2es/elastic-password            a copy mqtt2es can read (run, setup)
#
# then waits for Elasticsearch and sets the kibana_system password, and exits 0.
# The device credentials come from docker/init-devices.sh (the `init-devices` service).
set -eu

# CERTS_DIR and SECRETS_DIR only for tests/it/packaging.rs, which runs this script as written with
# stand-ins for elasticsearch-certutil and curl.
certs="${CERTS_DIR:-config/certs}"
secrets="${SECRETS_DIR:-/secrets}"

# 32 letters and digits: about 190 bits, and safe in JSON and on a command line.
random_password() {
    tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32
}

umask 077
mkdir -p "$certs" "$secrets/mqtt2es"
if [ ! -s "$secrets/elastic-password" ]; then
    random_password >"$secrets/elastic-password"
fi
if [ ! -s "$secrets/kibana_system-password" ]; then
    random_password >"$secrets/kibana_system-password"
fi
cp "$secrets/elastic-password" "$secrets/mqtt2es/elastic-password"

if [ ! -f "$certs/ca/ca.crt" ]; then
    echo "creating the CA"
    bin/elasticsearch-certutil ca --silent --pem --out "$certs/ca.zip"
    unzip -o "$certs/ca.zip" -d "$certs"
    rm "$certs/ca.zip"
fi
if [ ! -f "$certs/elasticsearch/elasticsearch.crt" ]; then
    echo "creating the certificate of the elasticsearch node"
    printf '%s\n' 'instances:' '  - name: elasticsearch' '    dns: [elasticsearch, localhost]' \
        '    ip: [127.0.0.1]' >"$certs/instances.yml"
    bin/elasticsearch-certutil cert --silent --pem --in "$certs/instances.yml" --out "$certs/certs.zip" \
        --ca-cert "$certs/ca/ca.crt" --ca-key "$certs/ca/ca.key"
    unzip -o "$certs/certs.zip" -d "$certs"
    rm "$certs/certs.zip"
fi

# Who reads what. Elasticsearch and Kibana run as uid 1000, group 0; mqtt2es as 10001.
# Elasticsearch takes ELASTIC_PASSWORD_FILE only with mode 400 or 600, hence a copy for mqtt2es.
chown -R root:root "$certs"
find "$certs" -type d -exec chmod 755 {} +
find "$certs" -type f -exec chmod 640 {} +
chmod 600 "$certs/ca/ca.key"
chmod 644 "$certs/ca/ca.crt"
chmod 755 "$secrets"
chown 1000:0 "$secrets/elastic-password" "$secrets/kibana_system-password"
chmod 600 "$secrets/elastic-password" "$secrets/kibana_system-password"
chown 10001:10001 "$secrets/mqtt2es" "$secrets/mqtt2es/elastic-password"
chmod 700 "$secrets/mqtt2es"
chmod 400 "$secrets/mqtt2es/elastic-password"
touch "$secrets/.elastic-generated"   # the health check: Elasticsearch may start now

echo "waiting for Elasticsearch"
until curl -s --cacert "$certs/ca/ca.crt" https://elasticsearch:9200 | grep -q 'missing authentication credentials'; do
    sleep 5
done
echo "setting the kibana_system password"
# The credentials go to curl on stdin (-K -), not on its command line.
until printf 'user = "elastic:%s"\n' "$(cat "$secrets/elastic-password")" |
    curl -s -K - -X POST --cacert "$certs/ca/ca.crt" -H 'Content-Type: application/json' \
        https://elasticsearch:9200/_security/user/kibana_system/_password \
        -d "{\"password\":\"$(cat "$secrets/kibana_system-password")\"}" | grep -q '^{}'; do
    sleep 5
done
echo "done: log in to Kibana as elastic with the password in /secrets/elastic-password"
