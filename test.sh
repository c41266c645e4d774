#!/usr/bin/env bash
# The test command of the README: on a fresh Debian/Ubuntu machine, as root, it installs what
# the tests need (iproute2, nftables, ping, dig, miniupnpd, a C compiler; this package with pytest and hypothesis) and runs
# every test, including the ones in network namespaces. It needs nothing outside this repository:
# the interop tests skip unless the drasyl-rs binaries are found (see README). Arguments go
# to pytest.
set -euo pipefail
cd "$(dirname "$0")"

missing=()
for cmd in ip nft ping dig miniupnpd cc; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing system packages (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    # miniupnpd-nftables is the bare daemon (no service: that is package 'miniupnpd'); the
    # port-mapping tests start it inside a namespace
    # gcc, libc6-dev, python3-dev: the C accelerators, optional for users, tested here (setup.py)
    apt-get install -y --no-install-recommends iproute2 nftables iputils-ping dnsutils miniupnpd-nftables \
        gcc libc6-dev python3-dev
fi

if [ ! -c /dev/net/tun ]; then
    command -v modprobe >/dev/null 2>&1 && modprobe tun 2>/dev/null || true
fi
if [ ! -c /dev/net/tun ]; then
    echo "ERROR: /dev/net/tun is missing: load the tun module on the host ('modprobe tun')" >&2
    echo "       or give the container the device (docker run --device /dev/net/tun)." >&2
    exit 1
fi
if [ "$(id -u)" != 0 ]; then
    echo "ERROR: the network-namespace tests need root; run: sudo ./test.sh" >&2
    exit 1
fi

echo "== python package ($(command -v python3), $(python3 --version))"
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'

echo "== tests"
exec python3 -m pytest -q "$@"
