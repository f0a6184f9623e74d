#!/usr/bin/env bash
# SuperNode authentication keys: one ECDSA P-384 key pair per SuperNode (OpenSSH format,
# what `flower-supernode --auth-supernode-private-key` and `flwr supernode register` read).
#
#   docker/generate_node_keys.sh NUM_NODES [OUT_DIR]    # default: docker/keys
#
# Writes supernode-I (private, 0600) and supernode-I.pub (0644) for I = 0..NUM_NODES-1.
# Then register every public key with the SuperLink (started with --enable-supernode-auth):
#   flwr supernode register docker/keys/supernode-I.pub CONNECTION
# and give SuperNode I its private key: --auth-supernode-private-key PATH/supernode-I.
# An unregistered SuperNode is refused and exits.
# Ownership: as for docker/generate_certs.sh, the Flower images run as UID/GID 49999, so for
# docker/compose.yaml chown the private keys to it:  sudo CERT_OWNER=49999:49999 docker/...
set -euo pipefail
umask 077
num="${1:?usage: generate_node_keys.sh NUM_NODES [OUT_DIR]}"
out="${2:-$(dirname "$0")/keys}"
mkdir -p "$out"
for ((i = 0; i < num; i++)); do
  key="$out/supernode-$i"
  rm -f "$key" "$key.pub"
  ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedsim-supernode-$i" -f "$key"
  chmod 600 "$key"
  chmod 644 "$key.pub"
  if [[ -n "${CERT_OWNER:-}" ]]; then
    chown "$CERT_OWNER" "$key"
  fi
done
echo "$num SuperNode key pairs written to $out"
