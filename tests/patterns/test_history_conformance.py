"""The history wire format, from ``docs/PROTOCOL.md`` alone: a raw ZeroMQ SUB builds
a history request from the "History request" table, and reads the replay with the
"Replay bundle entry" table, against a real shoal publisher. If the page and the code
disagree, this fails."""

from __future__ import annotations

import struct

import anyio
import pytest
import zmq
from test_protocol_conformance import table

from shoal._core import decode
from shoal.patterns import open_publisher
from support.raw import raw_receive, raw_socket

pytestmark = pytest.mark.anyio

FIELD = {"u8": "B", "u16": "H", "u32": "I"}


def layout(heading: str) -> dict[str, tuple[int, str]]:
    """Each fixed field of a table: its offset and its ``struct`` code."""
    out = {}
    for row in table(heading):
        if row["type"] in FIELD:
            out[row["field"]] = (int(row["offset"]), FIELD[row["type"]])
        elif row["size"].isdigit():
            out[row["field"]] = (int(row["offset"]), f"{row['size']}s")
    return out


def build_request(ident: bytes, depth: int, prefixes: list[bytes]) -> bytes:
    fields = layout("History request")
    values = {"tag": 0xFE, "id": ident, "depth": depth, "count": len(prefixes)}
    fixed = bytearray(max(at + struct.calcsize("<" + code) for at, code in fields.values()))
    for name, (at, code) in fields.items():
        struct.pack_into("<" + code, fixed, at, values[name])
    assert int(next(r for r in table("History request") if r["field"] == "prefixes")
               ["offset"]) == len(fixed)
    return bytes(fixed) + b"".join(p + b"\0" for p in prefixes)


def read_bundle(frame: bytes) -> list[bytes]:
    fields = layout("Replay bundle entry")
    (h_at, h_code), (b_at, b_code) = fields["head"], fields["body"]
    fixed = max(h_at + 4, b_at + 4)
    out, at = [], 0
    while at < len(frame):
        (head,) = struct.unpack_from("<" + h_code, frame, at + h_at)
        (body,) = struct.unpack_from("<" + b_code, frame, at + b_at)
        assert body == 0
        out.append(frame[at + fixed:at + fixed + head])
        at += fixed + head + body
    return out


async def test_a_raw_subscriber_asks_for_history_and_reads_the_replay() -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    with anyio.fail_after(10):
        async with open_publisher(bind="tcp://127.0.0.1:*", history=3, context=ctx) as pub:
            for i in range(10):
                for t in ("room/1", "room/2", "hall"):
                    await pub.publish(t, i)
            raw = raw_socket(ctx, zmq.SUB)
            try:
                raw.connect(pub.endpoints[0])
                ident = b"\x07" * 16
                raw.setsockopt(zmq.SUBSCRIBE, build_request(ident, 2, [b"room/"]))
                raw.setsockopt(zmq.SUBSCRIBE, b"room/")
                raw.setsockopt(zmq.SUBSCRIBE, b"\xff" + ident)
                bundle = (await raw_receive(raw))[0]
                await pub.publish("room/1", "live")
                live = decode((await raw_receive(raw))[0])
            finally:
                raw.close()
    assert bundle[:17] == b"\xff" + ident
    got = [decode(f) for f in read_bundle(bundle[17:])]
    assert [(m.topic, m.seq, m.body) for m in got] == [
        ("room/1", 8, 8), ("room/1", 9, 9), ("room/2", 8, 8), ("room/2", 9, 9)]
    assert (live.topic, live.seq, live.body) == ("room/1", 10, "live")
