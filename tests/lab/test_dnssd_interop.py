"""A python-zeroconf registration is visible to independent DNS-SD implementations.

Host A of a two-host namespace lab registers ``node-a._shoal._tcp.local.`` with
python-zeroconf pinned to its lab address; host B lists it with avahi (its own dbus-daemon
and avahi-daemon, in a private mount namespace so the machine's /run is never touched) and
with dig (unicast DNS query to A's mDNS port). All traffic stays inside the lab.

Needs root and, per test: ``apt-get install -y avahi-daemon avahi-utils`` (avahi) or
``apt-get install -y bind9-dnsutils`` (dig). Missing tools skip with the reason.
"""

from __future__ import annotations

import select
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netlab import Host, Lab, lab_fixture

pytestmark = pytest.mark.lab

lab2 = lab_fixture(2)

SERVICE_TYPE = "_shoal._tcp.local."
INSTANCE = "node-a"
PORT = 7700
NODE_ID = "00112233445566778899aabbccddeeff"

REGISTER = f"""
import socket, sys
from zeroconf import ServiceInfo, Zeroconf
ip = sys.argv[1]
zc = Zeroconf(interfaces=[ip])
info = ServiceInfo(
    {SERVICE_TYPE!r}, {INSTANCE + "." + SERVICE_TYPE!r}, port={PORT},
    properties={{"v": "1", "id": {NODE_ID!r}}},
    addresses=[socket.inet_aton(ip)], server={INSTANCE + ".local."!r},
)
zc.register_service(info)
print("registered", flush=True)
try:
    sys.stdin.read()  # until the test closes our stdin
finally:
    zc.unregister_service(info)
    zc.close()
"""

AVAHI_CONF = """\
[server]
host-name=observer-b
use-ipv4=yes
use-ipv6=no
allow-interfaces=eth0
enable-dbus=yes
ratelimit-interval-usec=1000000
ratelimit-burst=1000

[wide-area]
enable-wide-area=no

[publish]
disable-publishing=yes

[reflector]
enable-reflector=no
"""

# Run as: ip netns exec B unshare -m --propagation private sh SCRIPT CONF
# A tmpfs over /run (in this private mount namespace only) gives dbus-daemon and
# avahi-daemon their usual /run/dbus and /run/avahi-daemon without touching the real ones.
AVAHI_SCRIPT = """\
set -eu
conf=$1
mount -t tmpfs shoal-avahi /run
mkdir -p /run/dbus /run/avahi-daemon
dbus-daemon --system --nofork --nopidfile &
dbus=$!
avahi=
trap 'kill $avahi $dbus 2>/dev/null || true' EXIT
i=0
until [ -S /run/dbus/system_bus_socket ]; do
    i=$((i + 1)); [ $i -le 100 ] || { echo "dbus-daemon did not start" >&2; exit 3; }
    sleep 0.05
done
avahi-daemon --no-drop-root --no-chroot --no-rlimits -f "$conf" &
avahi=$!
i=0
until avahi-browse -a -t -p >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -le 100 ] || { echo "avahi-daemon did not start" >&2; exit 4; }
    sleep 0.1
done
i=0
while :; do
    out=$(timeout 5 avahi-browse -r -t -p _shoal._tcp || true)
    if printf '%s\\n' "$out" | grep -q '^=;'; then break; fi
    i=$((i + 1)); [ $i -le 5 ] || break
done
printf '%s\\n' "$out"
"""


def read_line(proc: subprocess.Popen[Any], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        pytest.fail(f"no output from {proc.args!r} within {timeout}s")
    line: str = proc.stdout.readline()
    return line.strip()


@pytest.fixture
def registered(lab2: Lab) -> Iterator[Host]:
    """Host A, with node-a registered by python-zeroconf pinned to A's address."""
    a = lab2.hosts[0]
    proc = a.popen(
        [sys.executable, "-c", REGISTER, a.address],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = read_line(proc, 15)
    if line != "registered":
        a.kill(proc)
        assert proc.stderr is not None
        pytest.fail(f"zeroconf registration failed: {line!r} {proc.stderr.read()}")
    yield a
    a.kill(proc)


def requires(*tools: str) -> pytest.MarkDecorator:
    """Skip (before the lab is built) unless every tool is on PATH."""
    missing = [t for t in tools if shutil.which(t) is None]
    return pytest.mark.skipif(bool(missing), reason=f"not installed: {', '.join(missing)}")


@requires("avahi-daemon", "avahi-browse", "dbus-daemon", "unshare")
def test_avahi_browse_lists_the_zeroconf_service(
    lab2: Lab, registered: Host, tmp_path: Path
) -> None:
    b = lab2.hosts[1]
    conf = tmp_path / "avahi-daemon.conf"
    conf.write_text(AVAHI_CONF)
    script = tmp_path / "avahi-browse.sh"
    script.write_text(AVAHI_SCRIPT)
    proc = b.popen(
        ["unshare", "-m", "--propagation", "private", "sh", str(script), str(conf)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=45)
    except subprocess.TimeoutExpired:
        b.kill(proc)
        pytest.fail("avahi in host B did not finish within 45s")
    assert proc.returncode == 0, err
    resolved = [line.split(";") for line in out.splitlines() if line.startswith("=;")]
    ours = [f for f in resolved if f[3] == INSTANCE and f[2] == "IPv4"]
    assert ours, f"avahi-browse did not resolve {INSTANCE}:\n{out}\n{err}"
    _, iface, _, name, stype, domain, host, address, port, txt = ours[0]
    assert (iface, name, stype, domain) == ("eth0", INSTANCE, "_shoal._tcp", "local")
    assert (host, address, port) == (f"{INSTANCE}.local", registered.address, str(PORT))
    assert f'"id={NODE_ID}"' in txt
    assert '"v=1"' in txt


def dig(host: Host, server: str, name: str, rtype: str) -> str:
    done = host.run(
        ["dig", "+short", "+time=2", "+tries=2", "-p", "5353", f"@{server}", name, rtype],
        timeout=15,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


@requires("dig")
def test_dig_queries_the_zeroconf_service(lab2: Lab, registered: Host) -> None:
    """dig asks A's mDNS port by unicast: a query to 224.0.0.251 is answered from A's own
    address (legacy unicast reply), which dig drops as coming from an unexpected source."""
    b = lab2.hosts[1]
    a = registered.address
    instance = f"{INSTANCE}.{SERVICE_TYPE}"
    assert dig(b, a, SERVICE_TYPE, "PTR") == instance
    assert dig(b, a, instance, "SRV") == f"0 0 {PORT} {INSTANCE}.local."
    txt = dig(b, a, instance, "TXT")
    assert f'"id={NODE_ID}"' in txt
    assert '"v=1"' in txt
    assert dig(b, a, f"{INSTANCE}.local.", "A") == a
