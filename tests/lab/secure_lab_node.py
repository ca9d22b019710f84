"""A (secured) shoal node for one host of a namespace lab, driven over stdio; and a
packet capture for the same hosts.

    python tests/lab/secure_lab_node.py --name NAME [--key-file PATH] [--trust KEY]...
        [--pub CH] [--sub CH] [--publish CH BODY]
    python tests/lab/secure_lab_node.py --capture IFACE OUTFILE
    python tests/lab/secure_lab_node.py --forge ID NAME PK ADDRESS

Node mode speaks ``tests/lab/labtools.py``'s protocol (``--name`` first, one JSON event per
stdout line, a ``ready`` event): ``--key-file`` (a ``KeyPair.save`` file) and
``--trust`` (repeatable) open the node with ``Security(keypair, Trust.keys(...))``;
without ``--key-file`` the node is plaintext. Discovery is ``MDNS()`` on every
interface of the namespace. Events: ``ready`` (``name``, ``id``, ``epoch``,
``control_port``, ``addresses``, ``public_key``), ``joined`` (``name``, ``id``),
``msg`` (``channel``, ``body`` as latin-1 text, ``sender``). ``--publish CH BODY``
publishes BODY (raw bytes) on CH every 0.1 s. Ends on ``{"cmd": "exit"}`` or end of
stdin, after printing ``exited``.

Capture mode appends every frame seen on IFACE (both directions; an ``AF_PACKET``
raw socket) to OUTFILE until killed.

Forge mode plays an intruder on the segment: it binds a CURVE server (a ROUTER with a
key pair of its own) on ADDRESS and advertises it over mDNS as a shoal node with
another node's ID, NAME and public key PK (the TXT record a real node would send);
PK ``own`` advertises the intruder's own public key instead.
It prints ``forging PORT``, then ``got N`` every 0.5 s: how many messages reached it.

Network safety: both modes refuse to run (exit 2) outside a named network namespace
(``/run/netns/*``): they are for ``Host.popen`` only, where "every interface" and the
captured interface are the lab's.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from contextlib import AsyncExitStack
from typing import Any

import trio
from lab_node import named_namespace  # this directory: the same refusal rule

import shoal
from shoal.discovery import MDNS, PeerJoined
from shoal.security import Security, Trust, load_keypair

ETH_P_ALL = 0x0003


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.time(), **fields},
                                default=repr) + "\n")
    sys.stdout.flush()


def capture(interface: str, path: str) -> int:
    """Append every frame on ``interface`` to ``path`` until killed."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((interface, 0))
    with open(path, "ab", buffering=0) as out:
        print("capturing", flush=True)
        while True:
            out.write(sock.recv(65_535))


async def read_commands(done: trio.Event) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buf = b""
    async with stdin:
        while True:
            chunk = await stdin.receive_some(4096)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            if any(json.loads(line).get("cmd") == "exit" for line in lines if line.strip()):
                break
    done.set()


async def run(args: argparse.Namespace) -> None:
    security = None
    if args.key_file:
        security = Security(load_keypair(args.key_file), Trust.keys(args.trust))
    done = trio.Event()
    async with AsyncExitStack() as stack:
        node = await stack.enter_async_context(shoal.open_node(
            args.name, discovery=MDNS(), heartbeat=0.2, peer_timeout=2.0,
            security=security))
        pubs = {ch: await stack.enter_async_context(node.open_publisher(ch))
                for ch in args.pub}
        subs = [(ch, await stack.enter_async_context(node.open_subscriber(ch)))
                for ch in args.sub]
        async with trio.open_nursery() as nursery:
            watch = node.watch_peers()

            async def report_peers() -> None:
                async for ev in watch:
                    if isinstance(ev, PeerJoined):
                        emit("joined", name=ev.peer.name, id=ev.peer.id)

            async def report(channel: str, sub: Any) -> None:
                async for msg in sub:
                    emit("msg", channel=channel, body=bytes(msg.body).decode("latin-1"),
                         sender=msg.sender)

            async def publish(channel: str, body: bytes) -> None:
                while True:
                    await pubs[channel].publish("t", body)
                    await trio.sleep(0.1)

            nursery.start_soon(report_peers)
            for ch, sub in subs:
                nursery.start_soon(report, ch, sub)
            for ch, body in args.publish:
                nursery.start_soon(publish, ch, body.encode())
            nursery.start_soon(read_commands, done)
            emit("ready", name=node.name, id=node.id, epoch=node.epoch,
                 control_port=node.control_port, addresses=list(node.addresses),
                 public_key=None if node.public_key is None else node.public_key.decode())
            await done.wait()
            nursery.cancel_scope.cancel()
    emit("exited")


def forge(node_id: str, name: str, pk: str, address: str) -> int:
    """Advertise someone else's identity, pointing at a socket of our own."""
    import zmq
    from zeroconf import ServiceInfo, Zeroconf

    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    public, secret = zmq.curve_keypair()
    if pk == "own":  # an intruder's own key: a peer that trusted it would get through
        pk = public.decode()
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
    port = sock.bind_to_random_port(f"tcp://{address}")
    zc = Zeroconf(interfaces=[address])  # the lab host's own address, nothing else
    info = ServiceInfo(
        "_shoal._tcp.local.", f"{name}-{node_id[:8]}x._shoal._tcp.local.", port=port,
        addresses=[socket.inet_aton(address)], server=f"forger-{node_id[:8]}.local.",
        properties={"v": "1", "id": node_id, "name": name, "epoch": "7", "pk": pk})
    zc.register_service(info)
    print(f"forging {port}", flush=True)
    got = 0
    try:
        while True:
            while sock.poll(500):
                sock.recv_multipart()
                got += 1
            print(f"got {got}", flush=True)
    finally:
        zc.unregister_service(info)
        zc.close()
        sock.close(linger=0)
        ctx.term()


def main(argv: list[str]) -> int:
    if named_namespace() is None:
        print("secure_lab_node.py runs only inside a lab's network namespace "
              "(ip netns exec ...)", file=sys.stderr)
        return 2
    if argv[:1] == ["--capture"]:
        return capture(argv[1], argv[2])
    if argv[:1] == ["--forge"]:
        return forge(*argv[1:5])
    p = argparse.ArgumentParser()
    p.add_argument("--name", required=True)
    p.add_argument("--key-file")
    p.add_argument("--trust", action="append", default=[])
    p.add_argument("--pub", action="append", default=[])
    p.add_argument("--sub", action="append", default=[])
    p.add_argument("--publish", nargs=2, action="append", default=[], metavar=("CH", "BODY"))
    trio.run(run, p.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
