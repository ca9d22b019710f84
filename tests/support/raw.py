"""Raw pyzmq peers and the bad messages they send shoal's receivers.

``garbage(kind)`` lists messages a receiver of ``kind`` frames must drop, each with
the reason it must count it under in ``statistics().malformed``.

Network safety: the raw sockets bind or connect where the tests say (loopback,
``tmp_path`` ipc, inproc).
"""

from __future__ import annotations

import random
import struct
from collections import Counter

import anyio
import pytest
import zmq

from shoal._core import HEADER, Kind, decode, encode, encode_topic
from shoal._core._envelope import FLAG_HEADERS
from shoal.errors import DecodeError

RAW_SENDER = b"raw-pyzmq-peer!!"
"""The sender id a raw peer writes into the frames it builds."""


def raw_socket(ctx: zmq.Context[zmq.Socket[bytes]], kind: int) -> zmq.Socket[bytes]:
    """A raw socket of ``kind`` that closes without lingering."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    return sock


async def raw_receive(sock: zmq.Socket[bytes]) -> list[bytes]:
    """Receive one message on a raw socket from trio or asyncio: poll without blocking."""
    while True:
        try:
            return sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            await anyio.sleep(0.01)


def patched(frame: bytes, field: int, value: int) -> bytes:
    """``frame`` with header byte ``field`` (0 version, 1 kind, 2 flags) set to ``value``."""
    at = frame.index(b"\0") + 1 + field
    return frame[:at] + bytes([value]) + frame[at + 1:]


def garbage(kind: Kind, *also: Kind, topic: str = "") -> list[tuple[list[bytes], str]]:
    """Bad messages for a receiver expecting ``kind`` frames (or ``also`` kinds), each
    with the reason it must be counted under. Each is one message: a list of frames."""
    valid = encode(kind, encode_topic(topic), {"looks": "fine", "n": list(range(20))},
                   sender=RAW_SENDER, epoch=1, stream=1, seq=0, timestamp_ns=0, correlation=1)
    prefix = encode_topic(topic) + b"\0"
    head = HEADER.pack(1, kind, FLAG_HEADERS, RAW_SENDER, 1, 1, 0, 0, 0)
    noise = random.Random(20240611).randbytes(100)
    cases: list[tuple[list[bytes], str]] = [
        ([b""], "no-topic-delimiter"),
        ([prefix[:-1] + b"no delimiter anywhere"], "no-topic-delimiter"),
        ([b"\xff\xfe\0" + valid[len(prefix):]], "topic-not-utf8"),
        ([valid[: len(prefix) + 20]], "truncated-header"),
        ([patched(valid, 0, 0)], "unsupported-version"),
        ([patched(valid, 0, 2)], "unsupported-version"),
        ([patched(valid, 1, 0)], "unknown-kind"),
        ([patched(valid, 1, 99)], "unknown-kind"),
        ([patched(valid, 2, 0x40)], "unknown-flags"),
        ([prefix + head + struct.pack("<I", 0xFFFFFFFF) + b"\x80"], "bad-headers-length"),
        ([prefix + head + struct.pack("<I", 2) + b"\x91\x01"], "headers-not-a-map"),
        ([valid[:-5]], "malformed"),  # msgpack body cut short
        ([valid + b"\x00"], "malformed"),  # trailing bytes
        ([prefix + HEADER.pack(1, kind, 0, RAW_SENDER, 1, 1, 0, 0, 0) + b"\xdb\xff\xff\xff\xff"],
         "malformed"),  # a str declaring 4 GiB
        ([prefix + noise], ""),  # random bytes: whatever decode() says
        ([valid, valid], "frame-count"),
        ([valid, b"", valid], "frame-count"),
    ]
    cases += [
        ([encode(other, encode_topic(topic), "wrong kind", sender=RAW_SENDER, epoch=1,
                 stream=1, seq=0, timestamp_ns=0, correlation=1)], "unexpected-kind")
        for other in Kind if other is not kind and other not in also
    ]
    return [(frames, reason or decode_reason(frames[0])) for frames, reason in cases]


def decode_reason(frame: bytes) -> str:
    """The reason ``decode`` gives for refusing ``frame``."""
    with pytest.raises(DecodeError) as info:
        decode(frame)
    return info.value.reason


def expected_reasons(cases: list[tuple[list[bytes], str]]) -> Counter[str]:
    """How many of ``cases`` each reason counts."""
    return Counter(reason for _, reason in cases)
