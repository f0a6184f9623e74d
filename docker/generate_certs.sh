#!/usr/bin/env bash
# A throwaway CA and a SuperLink certificate (prototyping only; use your organisation's PKI
# in production).
#
#   docker/generate_certs.sh [OUT_DIR]          # default: docker/certificates
#
# Writes ca.key (the CA's private key: keep it off the servers, compose never mounts it),
# ca.crt (what SuperNodes and `flwr` verify the SuperLink with), server.key and server.pem
# (the SuperLink's key and certificate). Private keys are 0600, certificates 0644.
# The certificate is valid for `superlink` (the compose service), `localhost` and 127.0.0.1;
# add the names devices reach the server by with SERVER_SAN, e.g.
#   SERVER_SAN="IP:192.168.1.10,DNS:server.lan" docker/generate_certs.sh
#
# Ownership: Flower's official images (flwr/superlink, flwr/supernode) run as the non-root
# user `app`, UID/GID 49999 (check: docker run --rm --entrypoint id flwr/superlink:1.42.0).
# A bind-mounted 0600 key must belong to that user or the SuperLink cannot read it, so for
# docker/compose.yaml run as root with CERT_OWNER, which chowns server.key (only):
#   sudo CERT_OWNER=49999:49999 docker/generate_certs.sh
# Without CERT_OWNER every file belongs to you (right for a SuperLink run outside Docker).
set -euo pipefail
umask 077
out="${1:-$(dirname "$0")/certificates}"
mkdir -p "$out"
cd "$out"
san="DNS:superlink,DNS:localhost,IP:127.0.0.1${SERVER_SAN:+,$SERVER_SAN}"
openssl req -x509 -newkey rsa:4096 -nodes -days 365 -subj "/CN=fedsim-ca" \
  -keyout ca.key -out ca.crt
openssl req -newkey rsa:4096 -nodes -subj "/CN=superlink" -keyout server.key \
  -out server.csr
printf "subjectAltName=%s\n" "$san" > san.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 \
  -extfile san.ext -out server.pem
rm -f server.csr san.ext ca.srl
chmod 600 ca.key server.key
chmod 644 ca.crt server.pem
if [[ -n "${CERT_OWNER:-}" ]]; then
  chown "$CERT_OWNER" server.key
fi
echo "certificates written to $out (subjectAltName $san)"
