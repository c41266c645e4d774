# drasyl-agent for ../shared/bench/peers.sh (its PEERS_EXTRA hook): measured the same way as
# nebula and wireguard-go, in the same run. Usage (root; from anywhere):
#
#   PEERS_EXTRA=$PWD/bench/peers_drasyl.sh ../shared/bench/peers.sh nebula wireguard-go drasyl --nat none
#   DRASYL_BENCH_EXTRA_PEERS=100 PEERS_EXTRA=… peers.sh drasyl   # RSS with 100 more peers in the network
#
# Our super peer (python -m drasyl.superpeer) runs on dl-sp 198.51.100.10:22527 (TCP 8443), the
# agents (python -m drasyl.agent run) on dl-a and dl-b with identities from the test vectors
# (tests/vectors, or $DRASYL_VECTORS) and one network config (file://, 10.77.5.0/24, every
# node may talk to every node). The agents bring up the TUN device "drasyl" and its address
# themselves. They write their names into /etc/netns/dl-{a,b}/hosts (created here; `ip netns
# exec` mounts it over /etc/hosts), never into the machine's /etc/hosts. peers.sh has no
# cleanup hook, so those two files stay (without drasyl lines: the agents remove theirs on
# SIGTERM); `rm -r /etc/netns/dl-a /etc/netns/dl-b` after the run removes them.

DRASYL_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DRASYL_VECTORS=${DRASYL_VECTORS:-$DRASYL_REPO/tests/vectors}

drasyl_prepare() {
	OVL_A=10.77.5.2 OVL_B=10.77.5.3
	local ns
	for ns in dl-a dl-b; do
		mkdir -p "/etc/netns/$ns"
		[[ -e /etc/netns/$ns/hosts ]] || printf '127.0.0.1 localhost\n' >"/etc/netns/$ns/hosts"
	done
	PYTHONPATH=$DRASYL_REPO python3 - "$TD" "$DRASYL_VECTORS/derived.json" "$OVL_A" "$OVL_B" \
		"${DRASYL_BENCH_EXTRA_PEERS:-0}" <<'EOF'
import json, os, sys
from nacl.signing import SigningKey
from drasyl.identity import Identity

td, vectors, ovl_a, ovl_b, extra = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
ids = {k: Identity.from_hex(v["secret_key_hex"], v["proof_of_work"])
       for k, v in json.load(open(vectors))["identities"].items()}
sp, a, b = ids["id_1"], ids["id_2"], ids["id_3"]
sp.save(os.path.join(td, "sp.identity")) if not os.path.exists(os.path.join(td, "sp.identity")) else None
nodes = [(a.public_key_hex, ovl_a, "bench-a"), (b.public_key_hex, ovl_b, "bench-b")]
for i in range(extra):  # peers that never come up: they cost a handle and a table entry each
    nodes.append((SigningKey.generate().verify_key.encode().hex(), f"10.77.{6 + i // 250}.{1 + i % 250}", f"extra{i}"))
net = ['network = "10.77.0.0/16"', 'name = "dl-bench"', ""]
for pk, ip, name in nodes:
    net += ["[[node]]", f'pk = "{pk}"', f'ip = "{ip}"', f'hostname = "{name}"', ""]
net += ["[[policy]]", 'source_groups = ["ALL"]', 'destination_groups = ["ALL"]']
open(os.path.join(td, "net.toml"), "w").write("\n".join(net) + "\n")
sp_url = f"udp://198.51.100.10:22527?publicKey={sp.public_key_hex}&networkId=1&tcpPort=8443"
for side, ident in (("a", a), ("b", b)):
    os.makedirs(os.path.join(td, side), exist_ok=True)
    with open(os.path.join(td, side, "config.toml"), "w") as f:
        f.write(f'super_peers = ["{sp_url}"]\n\n[identity]\nsk = "{ident.secret_key.hex()}"\n'
                f'pow = {ident.proof_of_work}\n\n[[network]]\nconfig_url = "file://{td}/net.toml"\n')
EOF
}

drasyl_rdv() {
	start_bg RDV_PID dl-sp "$TD/sp.log" env PYTHONPATH="$DRASYL_REPO" DRASYL_IDENTITY_FILE="$TD/sp.identity" \
		DRASYL_UDP4_LISTEN=198.51.100.10:22527 DRASYL_UDP6_LISTEN= DRASYL_TCP4_LISTEN=198.51.100.10:8443 \
		DRASYL_TCP6_LISTEN= DRASYL_PEERS_PRINT_INTERVAL=0 DRASYL_PROMETHEUS_LISTEN= python3 -m drasyl.superpeer
	wait_listen dl-sp udp 22527 10 || log "drasyl: super peer did not start"
}

drasyl_node() {
	local side=$1 pid
	start_bg pid "dl-$side" "$TD/$side.log" env PYTHONPATH="$DRASYL_REPO" python3 -m drasyl.agent run \
		--config "$TD/$side/config.toml" --token "$TD/$side/auth.token" --log-level info
	printf -v "NODE_PID_$side" '%s' "$pid"
	IFNAME_b=drasyl
}

drasyl_version() {
	echo "drasyl-agent (python $(python3 -c 'import platform; print(platform.python_version())'), $(git -C "$DRASYL_REPO" describe --always --dirty 2>/dev/null))"
}
