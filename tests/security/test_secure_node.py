"""Secured nodes: ``open_node(..., security=Security(keypair, trust))``.

Every connection between secured nodes is CURVE-encrypted and authenticated, and a
node admits only the peers its trust policy allows. Specified here, node against
node: trusted pairs run every pattern (static keys and mDNS), untrusted keys and
plaintext nodes get nothing either way (and the refusals are counted and logged),
trust on first use pins node ids, a trusted-keys file that gains a key admits that
node without a restart, forged mDNS advertisements lead nowhere, and a flood of
advertisements leaves the node's tables bounded.

Network safety: every node listens on 127.0.0.1 only; mDNS is pinned to 127.0.0.1
with a unique service type per test; the forged advertisements are registered on
127.0.0.1 too. Every I/O test runs under ``anyio.fail_after``, once on each event loop
(trio, asyncio, uvloop).
"""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest
import zmq
from zeroconf import IPVersion, ServiceInfo
from zeroconf import Zeroconf as _Zeroconf

import shoal
from shoal import Node
from shoal._zmq._socket import Socket
from shoal.discovery import MDNS, Static
from shoal.discovery._mdns import _MAX_KNOWN
from shoal.errors import LocalProtocolError
from shoal.node._discovered import MAX_RECORDS
from shoal.node._node import MAX_PENDING_LINKS
from shoal.security import KeyPair, Security, Trust, generate_keypair, server_options
from support.endpoints import free_port
from support.waiting import eventually

pytestmark = pytest.mark.anyio

LOOPBACK = ["127.0.0.1"]
A_KEYS = generate_keypair()
B_KEYS = generate_keypair()
EVIL_KEYS = generate_keypair()
C_KEYS = generate_keypair()


def ep(port: int) -> str:
    return f"tcp://127.0.0.1:{port}"


def service_type() -> str:
    return f"_sec{uuid.uuid4().hex[:8]}._tcp.local."


def secured(keys: KeyPair, *trusted: bytes) -> Security:
    return Security(keys, Trust.keys(list(trusted)))


def static_node(name: str, security: Security | None, *, port: int = 0,
                peers: dict[str, bytes] | Sequence[str] = (), **kw: Any,
                ) -> AbstractAsyncContextManager[Node]:
    return shoal.open_node(name, discovery=Static(peers), interfaces=LOOPBACK, port=port,
                           heartbeat=0.2, peer_timeout=2.0, security=security, **kw)


def mdns_node(name: str, security: Security | None, stype: str,
              ) -> AbstractAsyncContextManager[Node]:
    return shoal.open_node(name, discovery=MDNS(interfaces=LOOPBACK, service_type=stype),
                           heartbeat=0.2, peer_timeout=2.0, security=security)


@asynccontextmanager
async def static_pair(sa: Security | None, sb: Security | None,
                      ) -> AsyncIterator[tuple[Node, Node]]:
    """a listens on a fixed port; b lists it (with a's key when b is secured)."""
    port = free_port()
    peers: dict[str, bytes] | list[str] = [ep(port)] if sb is None else {ep(port):
                                                                        A_KEYS.public}
    async with static_node("a", sa, port=port) as a, static_node("b", sb, peers=peers) as b:
        yield a, b


def logged(caplog: pytest.LogCaptureFixture, *texts: str) -> bool:
    return any(all(t in r.getMessage() for t in texts) for r in caplog.records)


async def keep_publishing(pub: Any, body: bytes, stop: anyio.Event) -> None:
    while not stop.is_set():
        await pub.publish("t", body)
        await anyio.sleep(0.05)


# -- trusted pairs -------------------------------------------------------------------------


async def test_a_trusted_pair_runs_every_pattern_over_static_keys() -> None:
    with anyio.fail_after(20):
        async with static_pair(secured(A_KEYS, B_KEYS.public),
                               secured(B_KEYS, A_KEYS.public)) as (a, b):
            await a.wait_for_peers(1)
            await b.wait_for_peers(1)
            async with a.open_publisher("news") as pub, b.open_subscriber("news") as sub:
                await pub.wait_for_subscribers(1)
                await pub.publish("t", b"hello")
                assert (await sub.receive()).body == b"hello"
            async with (a.open_publisher("rnews", reliable=True) as rpub,
                        b.open_subscriber("rnews", reliable=True) as rsub):
                await rpub.wait_for_subscribers(1)
                for i in range(5):
                    await rpub.publish("t", i)
                assert [(await rsub.receive()).body for _ in range(5)] == list(range(5))
            async with a.open_puller("work") as pull, b.open_pusher("work") as push:
                await push.send(b"job")
                assert (await pull.receive()).body == b"job"
            async with (a.open_puller("rwork", reliable=True) as rpull,
                        b.open_pusher("rwork", reliable=True) as rpush):
                for i in range(5):
                    await rpush.send(i)
                assert sorted([(await rpull.receive()).body for _ in range(5)]) == list(
                    range(5))
            async with a.open_replier("math") as rep, b.open_requester("math") as req:
                async def serve() -> None:
                    async for r in rep:
                        await r.reply(r.body * 2)

                async with anyio.create_task_group() as nursery:
                    nursery.start_soon(serve)
                    assert await req.request(21) == 42
                    nursery.cancel_scope.cancel()
            zap = a.zap_statistics()
            assert zap is not None
            assert zap.allowed >= 1
            assert zap.refused == 0
            assert a.public_key == A_KEYS.public


async def test_a_trusted_pair_finds_each_other_over_mdns_and_talks() -> None:
    stype = service_type()
    with anyio.fail_after(25):
        async with (mdns_node("ma", secured(A_KEYS, B_KEYS.public), stype) as a,
                    mdns_node("mb", secured(B_KEYS, A_KEYS.public), stype) as b,
                    a.open_publisher("news") as pub, b.open_subscriber("news") as sub):
            await pub.wait_for_subscribers(1)
            await pub.publish("t", b"over mdns")
            assert (await sub.receive()).body == b"over mdns"
            assert [p.id for p in await a.wait_for_peers(1)] == [b.id]


# -- refusals --------------------------------------------------------------------------------


def refused(node: Node) -> int:
    """Connections ``node``'s trust policy refused so far."""
    zap = node.zap_statistics()
    assert zap is not None
    return zap.refused


def pending(receiver: Any) -> list[Any]:
    """The bodies ``receiver`` holds now (nothing is waited for)."""
    got = []
    while True:
        try:
            got.append(receiver.receive_nowait().body)
        except anyio.WouldBlock:
            return got


async def test_an_untrusted_key_gets_nothing_and_sends_nothing() -> None:
    # b trusts a; a does not trust b: whoever introduces, no channel carries anything.
    # c is the control: trusted by a, it opens the same channels the same way, after b.
    # Once c has had everything both ways, b, had a admitted it, would have had it too.
    a_port = free_port()
    to_a = {ep(a_port): A_KEYS.public}
    with anyio.fail_after(20):
        async with (static_node("a", secured(A_KEYS, EVIL_KEYS.public, C_KEYS.public),
                                port=a_port) as a,
                    static_node("b", secured(B_KEYS, A_KEYS.public), peers=to_a) as b,
                    a.open_publisher("p1") as a_pub, b.open_subscriber("p1") as b_sub,
                    b.open_publisher("p2") as b_pub, a.open_subscriber("p2") as a_sub,
                    a.open_pusher("w1") as a_push, b.open_puller("w1") as b_pull,
                    b.open_pusher("w2", reliable=True) as b_push,
                    a.open_puller("w2", reliable=True) as a_pull,
                    static_node("c", secured(C_KEYS, A_KEYS.public), peers=to_a) as c,
                    c.open_subscriber("p1") as c_sub, c.open_publisher("p2") as c_pub,
                    c.open_puller("w1") as c_pull,
                    c.open_pusher("w2", reliable=True) as c_push):
            b_push.send_nowait(b"job from b")
            c_push.send_nowait(b"job from c")
            stop = anyio.Event()
            async with anyio.create_task_group() as nursery:
                nursery.start_soon(keep_publishing, a_pub, b"from a", stop)
                nursery.start_soon(keep_publishing, b_pub, b"from b", stop)
                nursery.start_soon(keep_publishing, c_pub, b"from c", stop)
                await a_push.send(b"job from a")  # waits for a puller: c
                assert (await c_pull.receive()).body == b"job from a"
                assert (await c_sub.receive()).body == b"from a"
                assert (await a_pull.receive()).body == b"job from c"
                assert (await a_sub.receive()).body == b"from c"
                stop.set()
            assert pending(b_sub) == pending(b_pull) == pending(a_pull) == []
            assert set(pending(a_sub)) <= {b"from c"}
            assert [p.name for p in a.peers()] == ["c"]
            zap = a.zap_statistics()
            assert zap is not None
            assert zap.refused >= 1


async def test_secured_and_plaintext_nodes_never_talk_and_say_why(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="shoal")
    stype = service_type()
    with anyio.fail_after(25):
        async with (mdns_node("sec", secured(A_KEYS), stype) as a,
                    mdns_node("plain", None, stype) as b,
                    a.open_publisher("p") as a_pub, b.open_subscriber("p"),
                    b.open_publisher("q") as b_pub, a.open_subscriber("q")):
            await eventually(lambda: logged(
                caplog, "plaintext peer (no public key advertised) ignored by a secured node"))
            await eventually(lambda: logged(caplog, "ignored by a plaintext node"))
            # each has seen the other's advertisement and decided: neither introduces
            # itself, so no channel is wired (the trusted pair over mDNS above shows what
            # a node that admits does next: wires its channels at once)
            assert a.peers() == []
            assert b.peers() == []
            assert a.statistics().links == b.statistics().links == 0
            assert a_pub.subscribers == b_pub.subscribers == 0


async def test_static_peers_and_security_must_agree_on_keys() -> None:
    with anyio.fail_after(10):
        with pytest.raises(LocalProtocolError, match="needs the public key"):
            async with static_node("s", secured(A_KEYS), peers=[ep(free_port())]):
                pass
        with pytest.raises(LocalProtocolError, match="plaintext"):
            async with static_node("p", None, peers={ep(free_port()): B_KEYS.public}):
                pass


async def test_trust_on_first_use_pins_a_node_id_to_its_first_key(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="shoal")
    a_port = free_port()
    node_id = uuid.uuid4().bytes
    sa = Security(A_KEYS, Trust.tofu(tmp_path / "pins"))
    impostor_keys = generate_keypair()
    with anyio.fail_after(25):
        async with static_node("a", sa, port=a_port) as a, a.open_publisher("p") as pub:
            async with static_node("b", secured(B_KEYS, A_KEYS.public), node_id=node_id,
                                   peers={ep(a_port): A_KEYS.public}):
                await a.wait_for_peers(1)
            assert node_id.hex() in (tmp_path / "pins").read_text()
            await eventually(lambda: not a.peers())
            async with (static_node("b", secured(impostor_keys, A_KEYS.public),
                                    node_id=node_id, peers={ep(a_port): A_KEYS.public}) as c,
                        c.open_subscriber("p") as sub):
                stop = anyio.Event()
                async with anyio.create_task_group() as nursery:
                    nursery.start_soon(keep_publishing, pub, b"for b only", stop)
                    # a refused the new key for the pinned id (and says so) ...
                    await eventually(lambda: logged(caplog, "key-changed",
                                                    impostor_keys.public.decode()))
                    stop.set()
                # ... so the impostor never became a peer to be wired to
                assert a.peers() == []
                assert pending(sub) == []


async def test_a_state_with_another_key_for_a_live_node_id_is_dropped(
        caplog: pytest.LogCaptureFixture) -> None:
    # both b and the impostor hold keys a trusts; while b is live, its id is b's key's
    caplog.set_level(logging.INFO, logger="shoal")
    a_port = free_port()
    node_id = uuid.uuid4().bytes
    impostor_keys = generate_keypair()
    sa = secured(A_KEYS, B_KEYS.public, impostor_keys.public)
    with anyio.fail_after(20):
        async with (static_node("a", sa, port=a_port) as a,
                    static_node("b", secured(B_KEYS, A_KEYS.public), node_id=node_id,
                                peers={ep(a_port): A_KEYS.public})):
            [peer] = await a.wait_for_peers(1)
            async with static_node("b2", secured(impostor_keys, A_KEYS.public),
                                   node_id=node_id, peers={ep(a_port): A_KEYS.public}):
                await eventually(lambda: logged(caplog, "forged"))
                assert [(p.id, p.name, p.epoch) for p in a.peers()] == [
                    (peer.id, "b", peer.epoch)]


async def test_a_trusted_keys_file_gaining_a_key_admits_that_node_without_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shoal.node._links, "AUTH_RETRY", 0.5)  # a refused node retries sooner
    trusted = tmp_path / "trusted"
    trusted.write_text("# nobody yet\n")
    sa = Security(A_KEYS, Trust.file(trusted))
    with anyio.fail_after(30):
        async with (static_pair(sa, secured(B_KEYS, A_KEYS.public)) as (a, b),
                    a.open_publisher("p") as pub, b.open_subscriber("p") as sub,
                    b.open_publisher("q") as bpub, a.open_subscriber("q") as asub):
            stop = anyio.Event()
            async with anyio.create_task_group() as nursery:
                nursery.start_soon(keep_publishing, pub, b"to b", stop)
                nursery.start_soon(keep_publishing, bpub, b"to a", stop)
                await eventually(lambda: refused(a) >= 1)  # b tried, and a said no
                assert pending(sub) == pending(asub) == []  # and, below, what changes that
                trusted.write_text(f"# nobody yet\n{B_KEYS.public.decode()} b\n")
                # within the retry backoff (AUTH_RETRY) plus a handshake
                assert (await sub.receive()).body == b"to b"
                assert (await asub.receive()).body == b"to a"
                stop.set()


# -- forged advertisements and floods ----------------------------------------------------------


def _forged_info(stype: str, label: str, node: Node, key: bytes, port: int) -> ServiceInfo:
    return ServiceInfo(
        stype, f"{label}.{stype}", port=port, addresses=[socket.inet_aton("127.0.0.1")],
        server=f"{label}.local.",
        properties={"v": "1", "id": node.id, "name": node.name, "epoch": "1",
                    "pk": key.decode()})


async def test_forged_mdns_advertisements_lead_nowhere(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="shoal")
    stype = service_type()
    # a CURVE server with another secret, behind the forged adverts: it has no ZAP
    # handler and no enforcement, so it would admit (and read) anyone who got through
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    evil = Socket.open(zmq.ROUTER, bind=["tcp://127.0.0.1:*"], context=ctx, linger_ms=0,
                       options=[o for o in server_options(EVIL_KEYS)
                                if o[0] not in (zmq.ZAP_DOMAIN, zmq.ZAP_ENFORCE_DOMAIN)])
    evil_port = int(evil.bound[0].rsplit(":", 1)[1])
    zc = await anyio.to_thread.run_sync(
        lambda: _Zeroconf(interfaces=LOOPBACK, ip_version=IPVersion.V4Only))
    try:
        with anyio.fail_after(30):
            async with (mdns_node("fa", secured(A_KEYS, B_KEYS.public), stype) as a,
                        mdns_node("fb", secured(B_KEYS, A_KEYS.public), stype) as b,
                        a.open_publisher("p") as pub):
                await a.wait_for_peers(1)
                wrong_key = _forged_info(stype, "forged-key", b, EVIL_KEYS.public, evil_port)
                wrong_port = _forged_info(stype, "forged-port", b, B_KEYS.public, evil_port)
                async def register(info: ServiceInfo) -> None:
                    # unique names: announced at once, without probing for a conflict
                    await anyio.to_thread.run_sync(
                        lambda: zc.register_service(info, cooperating_responders=True))

                async with anyio.create_task_group() as registering:
                    registering.start_soon(register, wrong_key)
                    registering.start_soon(register, wrong_port)
                await eventually(lambda: logged(caplog, "forged-key", "refused"))
                stop = anyio.Event()
                async with anyio.create_task_group() as nursery:
                    nursery.start_soon(keep_publishing, pub, b"not for evil", stop)
                    # a tried the forged port, naming b's key: no handshake completes
                    # there (a counts the failures and says so), so nothing can pass
                    await eventually(lambda: logged(caplog, f"127.0.0.1:{evil_port}",
                                                    "no shoal handshake completes"),
                                     within=10)
                    stop.set()
                assert evil.receive_batch_nowait(16) == []
                assert [p.id for p in a.peers()] == [b.id]
    finally:
        evil.close()
        ctx.term()
        await anyio.to_thread.run_sync(zc.close)


async def test_an_advertisement_flood_keeps_tables_bounded_and_the_node_working() -> None:
    stype = service_type()
    mdns = MDNS(interfaces=LOOPBACK, service_type=stype)
    a_port = free_port()
    untrusted = [generate_keypair().public for _ in range(200)]
    with anyio.fail_after(30):
        async with (shoal.open_node("flooded", discovery=mdns, port=a_port,
                                    security=secured(A_KEYS, B_KEYS.public),
                                    heartbeat=0.2, peer_timeout=2.0) as a,
                    a.open_subscriber("p") as sub):
            for i in range(10_000):
                # a third plaintext, a third untrusted keys, a third copying the trusted
                # public key (it is public) towards ports where nothing listens
                props: dict[bytes, bytes | None] = {
                    b"v": b"1", b"id": uuid.uuid4().hex.encode(), b"name": b"x"}
                if i % 3 == 1:
                    props[b"pk"] = untrusted[i % len(untrusted)]
                elif i % 3 == 2:
                    props[b"pk"] = B_KEYS.public
                mdns._found(f"fake-{i}.{stype}", props, ["127.0.0.1"], 1 + i % 60_000)
                if i % 500 == 0:
                    await anyio.lowlevel.checkpoint()
            assert len(mdns._endpoints) <= _MAX_KNOWN
            [reports] = a._discovered._sources
            assert len(reports.records) <= MAX_RECORDS
            assert len(mdns._warned) <= 1024
            assert len(a._warned) <= 1024
            assert a.statistics().links <= MAX_PENDING_LINKS
            async with (static_node("b", secured(B_KEYS, A_KEYS.public),
                                    peers={ep(a_port): A_KEYS.public}) as b,
                        b.open_publisher("p") as pub):
                await pub.wait_for_subscribers(1)
                await pub.publish("t", b"still here")
                assert (await sub.receive()).body == b"still here"
            assert a.statistics().links <= MAX_PENDING_LINKS + 1
