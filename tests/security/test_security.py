"""``shoal.security``: CURVE key pairs and key files, trust policies, the ZAP handler
driven by the event loop (trio or asyncio), the CURVE socket options, and ``shoal keygen``.

The socket tests make real CURVE handshakes between ``shoal._zmq._socket.Socket``s in one
ZeroMQ context with the ZAP handler bound on it, once on each event loop (trio, asyncio,
uvloop). Some tests pin down libzmq's own behaviour that the design rests on (option
snapshot per connect, no reconnect after a refusal, a missing or slow handler); if a
libzmq upgrade changes one, its test says which assumption broke.

Network safety: every socket binds ``tcp://127.0.0.1:*`` or uses ``inproc://``.
"""

from __future__ import annotations

import argparse
import logging
import os
import stat
from pathlib import Path
from types import TracebackType

import anyio
import pytest
import zmq
from zmq.utils import z85

from shoal._zmq._socket import Socket
from shoal.cli._keygen import add_keygen_command, run_keygen
from shoal.errors import LocalProtocolError, ShoalError
from shoal.security import (
    ZAP_ENDPOINT,
    InvalidKey,
    KeyFileError,
    KeyPair,
    Security,
    SecurityError,
    Trust,
    Verdict,
    ZapHandler,
    check_key,
    client_options,
    connect_curve,
    generate_keypair,
    load_keypair,
    open_zap_handler,
    peer_key,
    public_key_of,
    serve_zap,
    server_options,
)
from support.waiting import eventually

pytestmark = pytest.mark.anyio

# A fixed, valid pair (made with zmq.curve_keypair) for format tests.
PUBLIC = b"rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
SECRET = b"JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6"
ALICE = generate_keypair()
BOB = generate_keypair()
SERVER = generate_keypair()
OTHER_SERVER = generate_keypair()
NODE_A = bytes(range(16))
NODE_B = bytes(range(1, 17))


# -- keys -----------------------------------------------------------------------------


def test_fixed_pair_is_consistent() -> None:
    assert public_key_of(SECRET) == PUBLIC
    assert KeyPair(PUBLIC, SECRET).public == PUBLIC


def test_keypair_round_trip_and_file_mode(tmp_path: Path) -> None:
    pair = generate_keypair()
    assert len(pair.public) == len(pair.secret) == 40
    path = tmp_path / "node.key"
    pair.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_keypair(path) == pair
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("#")]
    assert lines == [f"public-key  {pair.public.decode()}", f"secret-key  {pair.secret.decode()}"]
    assert pair.secret.decode() not in repr(pair)
    assert pair.public.decode() in repr(pair)


def test_save_mode_ignores_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        generate_keypair().save(tmp_path / "k")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


def test_save_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    first, second = generate_keypair(), generate_keypair()
    first.save(path)
    with pytest.raises(KeyFileError, match=r"exists.*overwrite=True"):
        second.save(path)
    assert load_keypair(path) == first
    second.save(path, overwrite=True)
    assert load_keypair(path) == second
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.key"]  # no temporary left


def test_save_into_a_missing_directory_says_so(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="directory exists"):
        generate_keypair().save(tmp_path / "nope" / "k")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_load_refuses_a_secret_others_can_read(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "node.key"
    generate_keypair().save(path)
    path.chmod(mode)
    with pytest.raises(KeyFileError, match=f"`chmod 600 {path}`"):
        load_keypair(path)


def test_load_public_key_is_optional(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_text(f"secret-key {SECRET.decode()}\n")
    path.chmod(0o600)
    assert load_keypair(path) == KeyPair(PUBLIC, SECRET)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(("text", "error", "match"), [
    (f"public-key {PUBLIC.decode()}\n", KeyFileError, "no 'secret-key' line"),
    ("secret-key abc\n", InvalidKey, "line 1: the secret key is 3 characters long"),
    ("secret-key " + "~" * 40 + "\n", InvalidKey, "line 1: .*not Z85"),
    ("secret-key " + "#" * 40 + "\n", InvalidKey, "not Z85"),  # a group above 2**32
    (f"# c\n\nsecret {SECRET.decode()}\n", KeyFileError, "line 3: expected 'public-key"),
    (f"secret-key {SECRET.decode()}\nsecret-key {SECRET.decode()}\n", KeyFileError,
     "line 2: a second secret-key"),
    (f"public-key {ALICE.public.decode()}\nsecret-key {SECRET.decode()}\n", InvalidKey,
     "does not belong to this secret key"),
    ("", KeyFileError, "no 'secret-key' line"),
])
def test_bad_key_files(tmp_path: Path, text: str, error: type[Exception], match: str) -> None:
    path = _write(tmp_path / "k", text)
    with pytest.raises(error, match=match) as info:
        load_keypair(path)
    assert isinstance(info.value, LocalProtocolError | SecurityError)
    assert SECRET.decode() not in str(info.value)
    assert str(path) in str(info.value)


def test_missing_key_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=r"`shoal keygen .*nope`"):
        load_keypair(tmp_path / "nope")
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_keypair(tmp_path)


@pytest.mark.parametrize(("public", "secret", "match"), [
    (PUBLIC[:39], SECRET, "public key .* 39 characters"),
    (PUBLIC, SECRET + b"0", "secret key is 41 characters"),
    (PUBLIC[:-1] + b" ", SECRET, "not Z85"),
    (ALICE.public, SECRET, "does not belong"),
    (PUBLIC, 12, "not int"),
], ids=["public-39", "secret-41", "public-not-z85", "another-key", "secret-not-bytes"])
def test_keypair_validation(public: object, secret: object, match: str) -> None:
    with pytest.raises(InvalidKey, match=match) as info:
        KeyPair(public, secret)  # type: ignore[arg-type]
    assert isinstance(info.value, LocalProtocolError)
    assert isinstance(info.value, ValueError)
    assert SECRET.decode() not in str(info.value)


def test_check_key_refuses_raw_bytes_in_configuration() -> None:
    assert check_key(PUBLIC.decode()) == PUBLIC
    with pytest.raises(InvalidKey, match="32 characters long"):
        check_key(z85.decode(PUBLIC))


# -- trust policies -----------------------------------------------------------------------


def test_trust_keys() -> None:
    trust = Trust.keys([ALICE.public, (BOB.public.decode(), "bob")])
    assert trust.allows(ALICE.public) == Verdict(True, "listed")
    assert trust.allows(BOB.public, NODE_A) == Verdict(True, "listed", "bob")
    assert trust.allows(z85.decode(BOB.public)).allowed  # raw, as ZAP has it
    assert trust.allows(SERVER.public) == Verdict(False, "unlisted")
    assert not trust.allows(SERVER.public)
    assert trust.allows(b"nonsense") == Verdict(False, "bad-key")
    assert trust.allows(ALICE.public, b"") == Verdict(False, "bad-node-id")
    stats = trust.statistics()
    assert stats.allowed == 3
    assert dict(stats.refused) == {"unlisted": 2, "bad-key": 1, "bad-node-id": 1}
    assert stats.refused_total == 4
    with pytest.raises(TypeError):
        stats.refused["x"] = 1  # type: ignore[index]
    assert Trust.keys({ALICE.public: "alice"}).allows(ALICE.public).name == "alice"


def test_trust_keys_refuses_bad_configuration() -> None:
    with pytest.raises(InvalidKey):
        Trust.keys([b"short"])
    with pytest.raises(LocalProtocolError, match="name is a str"):
        Trust.keys([(ALICE.public, 3)])  # type: ignore[list-item]
    with pytest.raises(LocalProtocolError, match="bytes or str"):
        Trust.keys([]).allows(3)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="node_id"):
        Trust.keys([]).allows(ALICE.public, "abc")  # type: ignore[arg-type]


def test_trust_file_is_reread_when_it_changes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "trusted"
    # no key starts with '#' (a 5-character group starting with it exceeds 32 bits),
    # so '#' lines are comments, a commented-out key included
    with pytest.raises(InvalidKey):
        check_key(b"#" + PUBLIC[1:])
    path.write_text(f"# the lab\n\n{ALICE.public.decode()} alice laptop\n"
                    f"#{BOB.public.decode()} bob, commented out\n{SERVER.public.decode()}\n")
    trust = Trust.file(path)
    assert trust.allows(ALICE.public) == Verdict(True, "listed", "alice laptop")
    assert trust.allows(SERVER.public) == Verdict(True, "listed")
    assert trust.allows(BOB.public) == Verdict(False, "unlisted")
    # the operator adds bob (same size as before would still be seen: inode, mtime)
    with path.open("a") as f:
        f.write(f"{BOB.public.decode()} bob\n")
    assert trust.allows(BOB.public) == Verdict(True, "listed", "bob")
    # ... removes alice, with an editor's rename
    new = tmp_path / "trusted.new"
    new.write_text(f"{BOB.public.decode()} bob\nthis line is broken\n")
    with caplog.at_level(logging.WARNING, logger="shoal"):
        os.replace(new, path)
        assert not trust.allows(ALICE.public)
        assert trust.allows(BOB.public)  # the broken line is skipped, the rest counts
    assert any("line 2" in r.getMessage() for r in caplog.records)
    # a file that vanishes trusts nobody until it comes back
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="shoal"):
        path.unlink()
        assert trust.allows(BOB.public) == Verdict(False, "unlisted")
        assert trust.allows(BOB.public) == Verdict(False, "unlisted")
        path.write_text(f"{BOB.public.decode()}\n")
        assert trust.allows(BOB.public)
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("trusting no key" in w for w in warnings) == 1, warnings
    assert any("readable again" in w for w in warnings)


def test_trust_file_errors_at_construction(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=r"no trusted-keys file.*one 'KEY \[name\]'"):
        Trust.file(tmp_path / "nope")
    bad = tmp_path / "bad"
    bad.write_text(f"{ALICE.public.decode()}\n{ALICE.public.decode()[:30]} short\n")
    with pytest.raises(KeyFileError, match="line 2: expected a 40-character"):
        Trust.file(bad)


def test_tofu_pins_refuses_a_changed_key_and_persists(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "pins"
    trust = Trust.tofu(path)
    assert not path.exists()
    assert trust.allows(ALICE.public, None) == Verdict(True, "unpinned")
    assert trust.allows(ALICE.public, NODE_A) == Verdict(True, "first-use")
    assert trust.allows(ALICE.public, NODE_A) == Verdict(True, "pinned")
    assert trust.allows(ALICE.public, NODE_B) == Verdict(True, "first-use")  # one key, two ids
    with caplog.at_level(logging.WARNING, logger="shoal"):
        assert trust.allows(BOB.public, NODE_A) == Verdict(False, "key-changed")
        assert trust.allows(BOB.public, NODE_A) == Verdict(False, "key-changed")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per (id, key), not on every heartbeat
    text = warnings[0].getMessage()
    for part in (NODE_A.hex(), BOB.public.decode(), ALICE.public.decode(), str(path),
                 "remove its line"):
        assert part in text
    assert warnings[0].name == "shoal"
    assert dict(trust.statistics().refused) == {"key-changed": 2}
    assert trust.statistics().allowed == 4
    assert f"{NODE_A.hex()} {ALICE.public.decode()}" in path.read_text().splitlines()

    again = Trust.tofu(path)  # a restart
    assert again.allows(ALICE.public, NODE_A) == Verdict(True, "pinned")
    assert again.allows(BOB.public, NODE_A) == Verdict(False, "key-changed")

    # the operator removes the line of a node that really was re-keyed: no restart
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith(NODE_A.hex())]
    path.write_text("\n".join(lines) + "\n")
    assert again.allows(BOB.public, NODE_A) == Verdict(True, "first-use")
    assert again.allows(ALICE.public, NODE_B) == Verdict(True, "pinned")
    assert Trust.tofu(path).allows(BOB.public, NODE_A) == Verdict(True, "pinned")


def test_tofu_malformed_file(tmp_path: Path) -> None:
    path = tmp_path / "pins"
    path.write_text(f"# pins\n{NODE_A.hex()} {ALICE.public.decode()}\nzz {BOB.public.decode()}\n")
    with pytest.raises(KeyFileError, match="line 3: expected 'NODE_ID_HEX KEY'"):
        Trust.tofu(path)


def test_tofu_keeps_the_pin_when_the_file_cannot_be_written(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    trust = Trust.tofu(tmp_path / "missing-dir" / "pins")
    with caplog.at_level(logging.WARNING, logger="shoal"):
        assert trust.allows(ALICE.public, NODE_A) == Verdict(True, "first-use")
    assert any("cannot write TOFU pins" in r.getMessage() for r in caplog.records)
    assert trust.allows(BOB.public, NODE_A) == Verdict(False, "key-changed")


def test_any_of() -> None:
    listed = Trust.keys([ALICE.public])
    other = Trust.keys([(BOB.public, "bob")])
    trust = Trust.any_of(listed, other)
    assert trust.allows(ALICE.public) == Verdict(True, "listed")
    assert trust.allows(BOB.public) == Verdict(True, "listed", "bob")
    assert trust.allows(SERVER.public) == Verdict(False, "unlisted")
    assert listed.statistics().allowed == 1  # bob's question stopped at `other`
    assert other.statistics().allowed == 1
    assert trust.statistics().allowed == 2
    with pytest.raises(LocalProtocolError):
        Trust.any_of()


def test_security_bundle() -> None:
    sec = Security(SERVER, Trust.keys([ALICE.public]))
    assert sec.public_key == SERVER.public
    assert sec.zap_trust.allows(SERVER.public) == Verdict(True, "listed", "self")
    assert sec.zap_trust.allows(ALICE.public).allowed
    assert not sec.zap_trust.allows(BOB.public)
    assert (zmq.CURVE_SERVER, 1) in sec.server_options()
    assert (zmq.ZAP_ENFORCE_DOMAIN, 1) in sec.server_options()
    assert (zmq.CURVE_PUBLICKEY, SERVER.public) in sec.client_options()
    with pytest.raises(SecurityError, match="Trust"):
        Security(SERVER, [ALICE.public])  # type: ignore[arg-type]


# -- real handshakes -------------------------------------------------------------------------


class Lab:
    """One ZeroMQ context and the shoal sockets opened on it, all closed when the
    ``with`` block ends. Entered inside the test, not as a fixture: closing a socket
    tells the event loop, so it happens while the loop runs."""

    def __init__(self) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sockets: list[Socket] = []

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sock in self.sockets:
            sock.close()
        self.ctx.term()

    def open(self, kind: int, options: list[tuple[int, int | bytes]] | None = None, *,
             bind: bool = False) -> Socket:
        sock = Socket.open(kind, context=self.ctx, options=options or [], linger_ms=0,
                           bind=["tcp://127.0.0.1:*"] if bind else [])
        self.sockets.append(sock)
        return sock

    def server(self, pair: KeyPair = SERVER, extra: list[tuple[int, int | bytes]] | None = None,
               ) -> tuple[Socket, str]:
        sock = self.open(zmq.ROUTER, [*(extra or []), *server_options(pair)], bind=True)
        return sock, sock.bound[0]

    def client(self, pair: KeyPair, endpoint: str, server_key: bytes = SERVER.public,
               ) -> Socket:
        sock = self.open(zmq.DEALER, [(zmq.RECONNECT_IVL, 50), *client_options(pair)])
        connect_curve(sock, endpoint, server_key)
        return sock

    def monitor(self, sock: Socket) -> Socket:
        mon = Socket(sock.zmq_socket.get_monitor_socket(), linger_ms=0)
        self.sockets.append(mon)
        return mon


async def receive(sock: Socket) -> list[bytes]:
    while True:
        batch = sock.receive_batch_nowait(1)
        if batch:
            return batch[0]
        await sock.wait_receivable()


async def receive_frames(sock: Socket) -> list[zmq.Frame]:
    """One message as zmq.Frames (their properties readable). Only for sockets that
    no other task waits on: it calls pyzmq directly."""
    raw = sock.zmq_socket
    while True:
        try:
            return raw.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            await sock.wait_receivable()


def drain(sock: Socket) -> list[list[bytes]]:
    return sock.receive_batch_nowait(100)


async def next_event(mon: Socket) -> tuple[int, int]:
    frames = await receive(mon)
    return (int.from_bytes(frames[0][:2], "little"), int.from_bytes(frames[0][2:6], "little"))


async def wait_for_event(mon: Socket, event: int) -> int:
    """Wait for a monitor event; return its value."""
    while True:
        got, value = await next_event(mon)
        if got == event:
            return value


async def test_trusted_client_gets_through_with_its_key_as_user_id() -> None:
    with anyio.fail_after(10), Lab() as lab:
        trust = Trust.keys([(ALICE.public, "alice")])
        async with open_zap_handler(lab.ctx, trust) as zap:
            server, endpoint = lab.server()
            client = lab.client(ALICE, endpoint)
            await client.send(b"hello")
            frames = await receive_frames(server)
            assert frames[1].bytes == b"hello"
            assert peer_key(frames[1]) == ALICE.public
            assert frames[1].get("User-Id") == ALICE.public.decode()
            assert frames[1].get("Trust-Name") == "alice"
            # and back: the server answers the routing id
            await server.send([frames[0].bytes, b"welcome"])
            assert await receive(client) == [b"welcome"]
            assert zap.statistics().allowed == 1
            assert zap.statistics().requests == 1
            assert trust.statistics().allowed == 1


async def test_untrusted_client_is_refused_and_does_not_retry() -> None:
    with anyio.fail_after(10), Lab() as lab:
        trust = Trust.keys([ALICE.public])
        async with open_zap_handler(lab.ctx, trust) as zap:
            server, endpoint = lab.server()
            bob = lab.open(zmq.DEALER, [(zmq.RECONNECT_IVL, 20), *client_options(BOB)])
            bob_events = lab.monitor(bob)
            connect_curve(bob, endpoint, SERVER.public)
            await bob.send(b"from bob")
            # libzmq: a 400 fails bob's handshake with HANDSHAKE_FAILED_AUTH, status 400
            assert await wait_for_event(bob_events, zmq.EVENT_HANDSHAKE_FAILED_AUTH) == 400
            alice = lab.client(ALICE, endpoint)
            await alice.send(b"from alice")
            assert (await receive(server))[1] == b"from alice"
            # bob would have retried every 20 ms: give it time to, then check it did not
            await anyio.sleep(0.3)
            assert drain(server) == []
            stats = zap.statistics()
            assert (stats.requests, stats.allowed, stats.refused) == (2, 1, 1)
            assert dict(trust.statistics().refused) == {"unlisted": 1}
            # a new connect() is a new attempt (how a node retries a refused link)
            bob.disconnect(endpoint)
            connect_curve(bob, endpoint, SERVER.public)
            await eventually(lambda: zap.statistics().refused == 2)


async def test_refusal_is_logged_once_per_key(
        caplog: pytest.LogCaptureFixture) -> None:
    with anyio.fail_after(10), Lab() as lab, caplog.at_level(logging.WARNING, logger="shoal"):
        async with open_zap_handler(lab.ctx, Trust.keys([])) as zap:
            _, endpoint = lab.server()
            for _ in range(3):
                lab.client(BOB, endpoint)
            await eventually(lambda: zap.statistics().refused == 3)
    refusals = [r.getMessage() for r in caplog.records if "refused a CURVE" in r.getMessage()]
    assert len(refusals) == 1
    assert BOB.public.decode() in refusals[0]
    assert "unlisted" in refusals[0]


async def test_wrong_server_key_never_connects() -> None:
    with anyio.fail_after(10), Lab() as lab:
        async with open_zap_handler(lab.ctx, Trust.keys([ALICE.public])) as zap:
            server, endpoint = lab.server()
            client = lab.open(zmq.DEALER, [(zmq.RECONNECT_IVL, 20), *client_options(ALICE)])
            events = lab.monitor(client)
            connect_curve(client, endpoint, OTHER_SERVER.public)
            await client.send(b"lost")
            # the server cannot open the client's HELLO: the connection drops, the client
            # keeps retrying (twice seen here), and the ZAP handler is never asked
            for _ in range(2):
                await wait_for_event(events, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
            assert drain(server) == []
            assert zap.statistics().requests == 0


async def test_plaintext_client_to_a_curve_server_gets_nothing() -> None:
    with anyio.fail_after(10), Lab() as lab:
        async with open_zap_handler(lab.ctx, Trust.keys([ALICE.public])) as zap:
            server, endpoint = lab.server()
            server_events = lab.monitor(server)
            plain = lab.open(zmq.DEALER)
            plain.connect(endpoint)
            await plain.send(b"in clear")
            # mechanism mismatch: the server fails the handshake before any ZAP request
            await wait_for_event(server_events, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
            alice = lab.client(ALICE, endpoint)
            await alice.send(b"fence")
            assert (await receive(server))[1] == b"fence"
            assert drain(server) == []
            assert zap.statistics().requests == 1  # alice's only


@pytest.mark.parametrize("mechanism", ["NULL", "PLAIN"])
async def test_other_mechanisms_are_refused_with_400(mechanism: str) -> None:
    with anyio.fail_after(10), Lab() as lab:
        async with open_zap_handler(lab.ctx, Trust.keys([ALICE.public])) as zap:
            # a socket of this context that does not use CURVE (NULL asks ZAP only when
            # the socket has a ZAP domain)
            options: list[tuple[int, int | bytes]] = [(zmq.ZAP_DOMAIN, b"shoal")]
            client_opts: list[tuple[int, int | bytes]] = []
            if mechanism == "PLAIN":
                options.append((zmq.PLAIN_SERVER, 1))
                client_opts = [(zmq.PLAIN_USERNAME, b"u"), (zmq.PLAIN_PASSWORD, b"p")]
            server = lab.open(zmq.ROUTER, options, bind=True)
            client = lab.open(zmq.DEALER, client_opts)
            events = lab.monitor(client)
            client.connect(server.bound[0])
            await client.send(b"x")
            assert await wait_for_event(events, zmq.EVENT_HANDSHAKE_FAILED_AUTH) == 400
            assert drain(server) == []
            stats = zap.statistics()
            assert (stats.requests, stats.wrong_mechanism, stats.allowed) == (1, 1, 0)


async def test_one_socket_connects_to_two_servers_with_their_own_keys() -> None:
    """libzmq copies the options at each connect(): the server key set before a connect
    holds for that connection, reconnects included."""
    with anyio.fail_after(10), Lab() as lab:
        async with open_zap_handler(lab.ctx, Trust.keys([ALICE.public])) as zap:
            one, ep_one = lab.server(SERVER)
            two, ep_two = lab.server(OTHER_SERVER)
            client = lab.open(zmq.DEALER, [(zmq.RECONNECT_IVL, 20), *client_options(ALICE)])
            connect_curve(client, ep_one, SERVER.public)
            connect_curve(client, ep_two, OTHER_SERVER.public)  # the option now names two
            for i in range(4):  # DEALER round-robins over both connections
                await client.send(b"m%d" % i)
            assert sorted([(await receive(one))[1], (await receive(one))[1],
                           (await receive(two))[1], (await receive(two))[1]]
                          ) == [b"m0", b"m1", b"m2", b"m3"]
            # server one restarts on the same port: the client reconnects with the key it
            # connected with (SERVER's), not the socket's current option (OTHER_SERVER's)
            one.close()
            lab.sockets.remove(one)
            await anyio.sleep(0.05)
            reborn = lab.open(zmq.ROUTER, server_options(SERVER))
            reborn.bind(ep_one)
            await eventually(lambda: zap.statistics().allowed == 3)
            got: set[bytes] = set()
            n = 0
            while b"one" not in got:
                await client.send(b"one" if n % 2 == 0 else b"two")
                n += 1
                for frames in drain(reborn):
                    got.add(frames[1])
                await anyio.sleep(0.01)
            assert zap.statistics().refused == 0


async def test_malformed_zap_requests_get_500_and_the_handler_keeps_working() -> None:
    key = z85.decode(ALICE.public)
    cases: list[tuple[list[bytes], bytes]] = [
        ([b"2.0", b"7", b"", b"1.2.3.4", b"", b"CURVE", key], b"7"),
        ([b"1.0", b"8", b"", b"", b"CURVE"], b"8"),
        ([b"1.0", b"9", b"", b"", b"", b"CURVE", key[:31]], b"9"),
        ([b"1.0", b"10", b"", b"", b"", b"CURVE", key, key], b"10"),
        ([b"1.0"], b""),
    ]
    with anyio.fail_after(10), Lab() as lab:
        async with open_zap_handler(lab.ctx, Trust.keys([ALICE.public])) as zap:
            req = lab.open(zmq.REQ)
            req.connect(ZAP_ENDPOINT)
            for request, request_id in cases:
                await req.send(request)
                reply = await receive(req)
                assert reply[:3] == [b"1.0", request_id, b"500"], reply
                assert reply[3].startswith(b"malformed ZAP request")
                assert reply[4:] == [b"", b""]
            # no empty delimiter (a DEALER speaking without the REQ envelope)
            dealer = lab.open(zmq.DEALER)
            dealer.connect(ZAP_ENDPOINT)
            await dealer.send([b"1.0", b"1", b"", b"", b"", b"CURVE", key])
            assert (await receive(dealer))[:5] == [b"", b"1.0", b"", b"500",
                                                     b"malformed ZAP request: no empty "
                                                     b"delimiter frame after the routing id"]
            # a well-formed request straight to the handler is answered as libzmq's are
            await req.send([b"1.0", b"42", b"shoal", b"127.0.0.1", b"", b"CURVE", key])
            assert await receive(req) == [b"1.0", b"42", b"200", b"OK", ALICE.public, b""]
            assert zap.statistics().malformed == len(cases) + 1
            # and a real handshake still goes through
            server, endpoint = lab.server()
            await lab.client(ALICE, endpoint).send(b"still fine")
            assert (await receive(server))[1] == b"still fine"


class BrokenTrust(Trust):
    def allows(self, public_key: bytes | str, node_id: bytes | None = None) -> Verdict:
        raise RuntimeError("policy bug")


async def test_a_failing_policy_gets_500_not_a_dead_handler(
        caplog: pytest.LogCaptureFixture) -> None:
    key = z85.decode(ALICE.public)
    with anyio.fail_after(10), Lab() as lab, caplog.at_level(logging.ERROR, logger="shoal"):
        async with open_zap_handler(lab.ctx, BrokenTrust()) as zap:
            req = lab.open(zmq.REQ)
            req.connect(ZAP_ENDPOINT)
            for _ in range(2):
                await req.send([b"1.0", b"1", b"", b"", b"", b"CURVE", key])
                assert (await receive(req))[2] == b"500"
            assert zap.statistics().errors == 2
    assert any("policy bug" in (r.exc_text or "") or r.exc_info for r in caplog.records)


def test_handler_answer_is_sans_io() -> None:
    zap = ZapHandler(Trust.keys([ALICE.public]))
    key = z85.decode(ALICE.public)
    assert zap.answer([b"r", b"", b"1.0", b"5", b"d", b"a", b"", b"CURVE", key]) == [
        b"r", b"", b"1.0", b"5", b"200", b"OK", ALICE.public, b""]
    bob = z85.decode(BOB.public)
    assert zap.answer([b"r", b"", b"1.0", b"6", b"d", b"a", b"", b"CURVE", bob])[4:6] == [
        b"400", b"key refused: unlisted"]
    assert zap.answer([])[4] == b"500"
    assert zap.statistics().requests == 3
    with pytest.raises(SecurityError):
        ZapHandler(object())  # type: ignore[arg-type]


async def test_second_handler_on_one_context_is_refused() -> None:
    with anyio.fail_after(5), Lab() as lab:
        trust = Trust.keys([])
        async with open_zap_handler(lab.ctx, trust):
            with pytest.raises(SecurityError, match="already bound"):
                async with open_zap_handler(lab.ctx, trust):
                    pass  # pragma: no cover
        # unbound on exit: another can start
        async with anyio.create_task_group() as nursery:
            handler = await nursery.start(serve_zap, lab.ctx, trust)
            assert isinstance(handler, ZapHandler)
            nursery.cancel_scope.cancel()


async def test_bind_then_serve_as_a_node_would() -> None:
    """A node binds the handler synchronously before its CURVE servers, serves it in
    its nursery, and closes it before terminating the context."""
    with anyio.fail_after(10), Lab() as lab:
        zap = ZapHandler(Security(SERVER, Trust.keys([ALICE.public])).zap_trust)
        with pytest.raises(SecurityError, match="before serve"):
            await zap.serve()
        zap.bind(lab.ctx)
        with pytest.raises(SecurityError, match="already bound"):
            zap.bind(lab.ctx)
        server, endpoint = lab.server()
        await lab.client(ALICE, endpoint).send(b"queued")
        await anyio.sleep(0.1)
        assert drain(server) == []  # bound, not served yet: the handshake waits
        async with anyio.create_task_group() as nursery:
            nursery.start_soon(zap.serve)
            assert (await receive(server))[1] == b"queued"
            # the node's own connecting sockets reach its own listeners
            await lab.client(SERVER, endpoint).send(b"self")
            assert (await receive(server))[1] == b"self"
            nursery.cancel_scope.cancel()
        zap.close()
        zap.close()
        assert zap.statistics().allowed == 2
        events = lab.monitor(server)
        await lab.client(ALICE, endpoint).send(b"after close")
        await wait_for_event(events, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        assert drain(server) == []


async def test_errors_in_the_block_come_out_as_themselves() -> None:
    with anyio.fail_after(5), Lab() as lab, pytest.raises(ValueError, match="mine"):
        async with open_zap_handler(lab.ctx, Trust.keys([])):
            raise ValueError("mine")


# -- libzmq's behaviour without a handler, or with a slow one ---------------------------------


async def test_no_handler_fails_closed_with_server_options() -> None:
    with anyio.fail_after(10), Lab() as lab:
        server, endpoint = lab.server()
        server_events = lab.monitor(server)
        await lab.client(ALICE, endpoint).send(b"x")
        await wait_for_event(server_events, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        assert drain(server) == []


async def test_no_handler_and_no_enforcement_admits_everyone() -> None:
    """Why server_options sets ZAP_DOMAIN and ZAP_ENFORCE_DOMAIN: without them, a CURVE
    server on a context with no handler admits any client (encryption only)."""
    with anyio.fail_after(10), Lab() as lab:
        plain_options: list[tuple[int, int | bytes]] = [
            (zmq.CURVE_SERVER, 1), (zmq.CURVE_SECRETKEY, SERVER.secret)]
        server = lab.open(zmq.ROUTER, plain_options, bind=True)
        await lab.client(BOB, server.bound[0]).send(b"anyone")
        frames = await receive_frames(server)
        assert frames[1].bytes == b"anyone"
        assert peer_key(frames[1]) is None  # no User-Id without ZAP


async def test_handshake_waits_for_a_slow_handler() -> None:
    with anyio.fail_after(10), Lab() as lab:
        # a hand-made handler that holds its answer until told
        zap = lab.open(zmq.ROUTER)
        zap.bind(ZAP_ENDPOINT)
        server, endpoint = lab.server()
        await lab.client(ALICE, endpoint).send(b"patient")
        request = await receive(zap)
        assert request[7] == b"CURVE"
        await anyio.sleep(0.3)
        assert drain(server) == []  # nothing passes while the handler thinks
        await zap.send([request[0], b"", b"1.0", request[3], b"200", b"OK", b"alice", b""])
        frames = await receive_frames(server)
        assert frames[1].bytes == b"patient"
        assert frames[1].get("User-Id") == "alice"


async def test_an_unanswered_handshake_times_out_and_the_client_retries() -> None:
    with anyio.fail_after(10), Lab() as lab:
        zap = lab.open(zmq.ROUTER)
        zap.bind(ZAP_ENDPOINT)
        server, endpoint = lab.server(extra=[(zmq.HANDSHAKE_IVL, 150)])
        await lab.client(ALICE, endpoint).send(b"x")
        first = await receive(zap)
        second = await receive(zap)  # HANDSHAKE_IVL expired, the client reconnected
        assert first[8] == second[8] == z85.decode(ALICE.public)
        assert drain(server) == []


# -- shoal keygen ---------------------------------------------------------------------------------


def keygen(*argv: str) -> tuple[int, list[str], list[str]]:
    parser = argparse.ArgumentParser(prog="shoal")
    add_keygen_command(parser.add_subparsers(dest="command"))
    out: list[str] = []
    err: list[str] = []
    status = run_keygen(parser.parse_args(["keygen", *argv]), out.append, err.append)
    return status, out, err


def test_keygen_writes_a_pair_and_prints_the_public_key(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    status, out, err = keygen(str(path))
    assert (status, err) == (0, [])
    pair = load_keypair(path)
    assert out == [pair.public.decode()]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keygen("--public", str(path)) == (0, [pair.public.decode()], [])
    status, out, _ = keygen("--public", "--json", str(path))
    assert status == 0
    assert out == [f'{{"path": "{path}", "public_key": "{pair.public.decode()}"}}']


def test_keygen_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    keygen(str(path))
    before = load_keypair(path)
    status, out, err = keygen(str(path))
    assert (status, out) == (1, [])
    assert len(err) == 1
    assert "exists" in err[0]
    assert "--force" in err[0]
    assert load_keypair(path) == before
    status, out, err = keygen("--force", "--json", str(path))
    assert (status, err) == (0, [])
    after = load_keypair(path)
    assert after != before
    assert after.public.decode() in out[0]


def test_keygen_failures_and_bad_arguments(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    status, _, err = keygen("--public", str(path))
    assert status == 1
    assert len(err) == 1
    assert err[0].startswith("shoal keygen: no key file")
    keygen(str(path))
    path.chmod(0o644)
    status, out, err = keygen("--public", str(path))
    assert (status, out) == (1, [])
    assert len(err) == 1
    assert f"chmod 600 {path}" in err[0]
    assert keygen("--public", "--force", str(path))[0] == 2
    assert keygen("")[0] == 2
    with pytest.raises(SystemExit) as info:
        keygen()
    assert info.value.code == 2


def test_errors_are_shoal_errors() -> None:
    assert issubclass(SecurityError, ShoalError)
    assert issubclass(KeyFileError, LocalProtocolError)
    assert issubclass(InvalidKey, LocalProtocolError)


# -- the public surface ------------------------------------------------------------------------

SECURITY_ALL = [
    "KEY_LENGTH",
    "ZAP_DOMAIN",
    "ZAP_ENDPOINT",
    "InvalidKey",
    "KeyFileError",
    "KeyPair",
    "Security",
    "SecurityError",
    "Trust",
    "TrustStatistics",
    "Verdict",
    "ZapHandler",
    "ZapStatistics",
    "check_curve_support",
    "check_key",
    "client_options",
    "connect_curve",
    "generate_keypair",
    "load_keypair",
    "open_zap_handler",
    "peer_key",
    "public_key_of",
    "serve_zap",
    "server_options",
]


def test_security_surface_is_pinned_and_documented() -> None:
    import shoal.security

    assert list(shoal.security.__all__) == SECURITY_ALL
    missing = []
    for name in SECURITY_ALL:
        obj = getattr(shoal.security, name)
        if isinstance(obj, str | bytes | int):
            continue
        doc = obj.__doc__ or ""
        if not doc.strip() or doc.startswith(f"{name}("):  # none, or a dataclass's own
            missing.append(name)
        if isinstance(obj, type):
            for attr, value in vars(obj).items():
                func = value.fget if isinstance(value, property) else value
                if (not attr.startswith("_") and (callable(func) or isinstance(value, property))
                        and not func.__doc__):
                    missing.append(f"{name}.{attr}")
    assert missing == []


@pytest.mark.lab
def test_shoal_keygen_is_a_command_of_the_shoal_script(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "node.key"
    run = [sys.executable, "-m", "shoal", "keygen"]
    made = subprocess.run([*run, str(path)], capture_output=True, text=True, timeout=30,
                          check=False)
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == load_keypair(path).public.decode()
    again = subprocess.run([*run, str(path)], capture_output=True, text=True, timeout=30,
                           check=False)
    assert again.returncode == 1
    assert "--force" in again.stderr
    assert (path.stat().st_mode & 0o777) == 0o600
