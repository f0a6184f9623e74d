#!/usr/bin/env bash
# A throwaway CA and a SuperLink certificate valid for `superlink` and `localhost`
# (prototyping only; use your organisation's PKI in production).
set -euo pipefail
out="$(dirname "$0")/certificates"
mkdir -p "$out" && cd "$out"
openssl req -x509 -newkey rsa:4096 -nodes -days 365 -subj "/CN=fedsim-ca" \
  -keyout ca.key -out ca.crt
openssl req -newkey rsa:4096 -nodes -subj "/CN=superlink" -keyout server.key -out server.csr
printf "subjectAltName=DNS:superlink,DNS:localhost,IP:127.0.0.1\n" > san.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 \
  -extfile san.ext -out server.pem
rm -f server.csr san.ext
chmod 644 ./*.crt ./*.pem ./*.key
echo "certificates written to $out"
