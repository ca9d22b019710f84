"""The receive hot path: the common envelope decoded inline, one closure per kind.

A receiver hands every frame to the function ``fast_decoder`` builds: a raw-bytes
body without user headers, in one frame (what nearly every message is), is decoded
here from what its stream's earlier frames taught (see ``fast_decoder``); anything
else, valid or not, goes to a fallback that uses ``decode`` and so judges it. The
layout these functions read is the one ``shoal._core._envelope`` defines and
documents; nothing here decides whether a frame is well-formed.

Contract: sans-I/O, like the envelope: no event loop (trio, asyncio, anyio), zmq, socket,
time or random.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from shoal._core._envelope import (
    _EMPTY,
    _FAST,
    _TAIL,
    FLAG_ADVISORY,
    FLAG_RAW,
    MAX_TOPIC,
    VERSION,
    Kind,
    Message,
    _new_message,
)
from shoal._core._gaps import FORGOTTEN, GapTracker, StreamKey

__all__ = ["fast_decode", "fast_decoder"]


def fast_decoder(
    kind: Kind,
    *,
    topic: bool,
    deliver: Callable[[Message], object],
    fallback: Callable[[bytes], object],
    gaps: GapTracker | None = None,
    wanted: Callable[[str], bool] | None = None,
    unwanted: Callable[[StreamKey, int], object] | None = None,
) -> Callable[[bytes], None]:
    """The receive hot path of one kind, as one function per frame: decode the common
    case (a raw-bytes body, no user headers, one frame) and ``deliver`` the message;
    hand anything else, valid or not, to ``fallback`` (which uses ``decode``, and so
    judges it). ``topic``: frames lead with a topic (pub/sub). ``gaps``: count each
    stream's sequence gaps (``GapTracker``), in-order arrivals inline. ``wanted``
    (topical only; None: every topic is): whether a topic is delivered; a frame of a
    topic it refuses goes to ``unwanted(stream key, seq)`` instead of ``deliver`` and
    never touches the gap counts. Asked once per stream, like the rest of what a
    stream's frames share: the common case pays nothing for it.

    One closure instead of a decode call and a deliver call: the per-message Python
    call is most of what a receive costs. What a stream's frames share (topic,
    version, kind, flags, sender, epoch, stream: the bytes up to the sequence
    number) is checked and decoded once per stream and remembered (at most
    ``_MAX_KNOWN_STREAMS``, then forgotten all at once); each message then costs one
    dictionary look-up and the unpacking of its last three header fields.
    """
    expect = VERSION | (int(kind) << 8) | (FLAG_RAW << 16)
    # version, kind and flags, the advisory flag bits left out (ignored: see above)
    mask = 0xFFFFFF & ~(FLAG_ADVISORY << 16)
    unpack = _FAST.unpack_from
    unpack_tail = _TAIL.unpack_from
    new = _new_message
    empty = _EMPTY
    at = _FAST.size  # from the NUL to the body
    ident = at - _TAIL.size  # from the NUL to the sequence number

    def parse(frame: bytes, z: int) -> _Known | None:
        """What the frames of this frame's stream share, or None to leave it to
        ``fallback``."""
        word, sender, epoch, stream, _seq, _ts, _corr = unpack(frame, z)
        if word & mask != expect:
            return None
        try:
            name = frame[:z].decode()
        except UnicodeDecodeError:
            return None
        sid = sender.hex()
        return (name, sid, epoch, stream, (sid, epoch, stream, name))

    if not topic:
        streams: dict[bytes, _Known] = {}  # stream prefix -> what its frames share
        streams_get = streams.get

        def learn(frame: bytes) -> _Known | None:
            known = parse(frame, 0)
            if known is not None:
                if len(streams) >= _MAX_KNOWN_STREAMS:
                    streams.clear()  # bounded: a flood of made-up ids costs re-learning
                streams[frame[:ident]] = known
            return known

        def accept_untopical(frame: bytes) -> None:
            if len(frame) >= at and not frame[0]:
                known = streams_get(frame[:ident])
                if known is None:
                    known = learn(frame)
                if known is not None:
                    seq, ts, corr = unpack_tail(frame, ident)
                    deliver(new(Message, ("", frame[at:], kind, known[1], known[2], known[3],
                                          seq, ts, corr, empty)))
                    return
            fallback(frame)
        return accept_untopical

    tracker = gaps if gaps is not None else GapTracker()
    cells = tracker.expected
    observe = tracker.observe
    refresh = cells.move_to_end
    check_gaps = gaps is not None
    # stream prefix -> what its frames share, and the stream's gap cell
    # (a stream whose topic is not wanted: False, with its key in ``refused``)
    topical: dict[bytes, tuple[str, str, int, int, StreamKey, list[int]] | bool] = {}
    topical_get = topical.get
    refused: dict[bytes, StreamKey] = {}

    def learn_topical(frame: bytes, z: int, skey: bytes
                      ) -> tuple[str, str, int, int, StreamKey, list[int]] | bool | None:
        known = parse(frame, z)
        if known is None:
            return None
        if len(topical) >= _MAX_KNOWN_STREAMS:
            topical.clear()
            refused.clear()
        if wanted is not None and not wanted(known[0]):
            topical[skey] = False
            refused[skey] = known[4]
            return False
        # A cell no sequence number matches: the first arrival goes through observe
        # (a first sight), which makes the tracker's cell; slow() then takes it.
        entry = (*known, [FORGOTTEN])
        topical[skey] = entry
        return entry

    def slow(skey: bytes, entry: tuple[str, str, int, int, StreamKey, list[int]],
             seq: int) -> None:
        """Not the next in order, or not tracked yet (or any more): the tracker
        judges it; the stream keeps the cell the tracker has for it now."""
        key = entry[4]
        observe(key, seq)
        cell = cells.get(key)
        if cell is not None and cell is not entry[5]:
            topical[skey] = (*entry[:5], cell)

    def accept_topical(frame: bytes) -> None:
        z = frame.find(b"\0", 0, MAX_TOPIC + 1)
        if z >= 0 and len(frame) - z >= at:
            skey = frame[:z + ident]
            entry = topical_get(skey)
            if entry is None:
                entry = learn_topical(frame, z, skey)
            if entry:
                name, sid, epoch, stream, key, cell = entry  # type: ignore[misc]
                seq, ts, corr = unpack_tail(frame, z + ident)
                if check_gaps:
                    if cell[0] == seq:
                        cell[0] = seq + 1
                        if not seq & _REFRESH_EVERY:
                            refresh(key)  # keep a busy stream among the recent ones
                    else:
                        slow(skey, entry, seq)  # type: ignore[arg-type]
                deliver(new(Message, (name, frame[z + at:], kind, sid, epoch, stream, seq,
                                      ts, corr, empty)))
                return
            if entry is False:
                if unwanted is not None:
                    unwanted(refused[skey], unpack_tail(frame, z + ident)[0])
                return
        fallback(frame)
    return accept_topical


def fast_decode(kind: Kind, *, topic: bool = False) -> Callable[[bytes], Message | None]:
    """The fast path of ``fast_decoder`` (without gap counting) as a plain decoder: the
    message, or None for anything it does not handle (valid or not: the caller then
    uses ``decode``). For receivers that look at a message before delivering it."""
    got: list[Message] = []
    accept = fast_decoder(kind, topic=topic, deliver=got.append, fallback=_ignore)
    pop = got.pop

    def decode_fast(frame: bytes) -> Message | None:
        accept(frame)
        return pop() if got else None
    return decode_fast


def _ignore(frame: bytes) -> None:
    pass


_Known = tuple[str, str, int, int, StreamKey]
"""What a stream's frames share, decoded: topic, sender id, epoch, stream, gap key."""
_MAX_KNOWN_STREAMS: Final = 4096
_REFRESH_EVERY: Final = 63
"""In-order arrivals refresh their stream's recency once per 64 (see ``GapTracker``)."""
