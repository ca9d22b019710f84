"""The node control protocol: what nodes tell each other about themselves.

Nodes exchange two kinds of control message, each one msgpack frame sent to the
other node's control (ROUTER) socket:

* ``State``: who I am (node id, epoch, name, protocol version), where I listen
  (addresses and control port) and my catalogue of channels (name, role, port),
  tagged with a revision that grows with every catalogue change. A node sends its
  State on first contact (an introduction), at once whenever its catalogue changes,
  and every heartbeat interval after that: the State doubles as the heartbeat.
* ``Beat``: I am alive (node id, epoch, revision): the small heartbeat. A node sends
  it, instead of its full State, to peers that have sent it a Beat (they understand
  it); the full State still goes at first contact, on every catalogue change and
  every ``STATE_EVERY`` heartbeats. A Beat whose revision is newer than the State
  the receiver holds changes nothing (the State that says more is on its way).
* ``Bye``: I am leaving (clean exit). The receiver drops the node at once.
* ``Suspect`` / ``Gone`` / ``Ask``: the ring watch (``shoal._core._ring``). A State
  says whether its node takes part (``ring``, carried as a catalogue entry of a role
  that older nodes skip); these three go only to nodes that take part. ``Suspect``:
  you have been silent towards me (``by``), beat me. ``Gone``: I (``by``) watched
  this incarnation and it has been silent for the timeout. ``Ask``: send me (``by``)
  your State (I lost you, or never had you, and you beat me).
* ``MembersQuery`` / ``Members``: which nodes do you know? The answer lists their
  control endpoints (address and port), so that a node that found one member (one
  static seed, one mDNS answer) meets the others. Plaintext nodes only: a secured
  node needs each peer's key, which discovery vouches for.
* ``ClockQuery`` / ``ClockReading``: what time is it on your wall clock? Anyone may
  send a query to a control socket; the node answers on the same connection with a
  reading (its ``time_ns`` and the query's token). ``shoal doctor`` compares clocks
  with it. Added after State and Bye: a node that predates it finds an unknown kind,
  drops the query as malformed (counted, logged at DEBUG) and answers nothing, so the
  asker's timeout is the only sign; nothing else about the two nodes changes.

Every control frame starts with the protocol version, so a node on another version is
recognised and ignored (``VersionMismatch``) instead of being mis-decoded.

Contract: sans-I/O (no sockets, no clock). ``decode_control`` treats its input as
hostile: anything malformed raises ``DecodeError`` with a stable reason, and sizes are
bounded (``MAX_CHANNELS``, ``MAX_ADDRESSES``, name lengths) before anything is built.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from shoal._core._envelope import MAX_TOPIC, VERSION
from shoal._core._errors import DecodeError, EncodeError

__all__ = [
    "MAX_ADDRESSES",
    "MAX_CHANNELS",
    "MAX_MEMBERS",
    "MAX_NAME",
    "Ask",
    "Beat",
    "Bye",
    "ChannelOffer",
    "ClockQuery",
    "ClockReading",
    "ControlMessage",
    "Gone",
    "Members",
    "MembersQuery",
    "Role",
    "State",
    "Suspect",
    "VersionMismatch",
    "decode_control",
    "encode_control",
]

MAX_CHANNELS: Final = 1024
MAX_ADDRESSES: Final = 32
MAX_NAME: Final = 255
MAX_MEMBERS: Final = 1024
_MAX_FRAME: Final = 256 * 1024

_STATE: Final = "state"
_BYE: Final = "bye"
_BEAT: Final = "beat"
_CLOCK_QUERY: Final = "clock?"
_CLOCK_READING: Final = "clock"
_SUSPECT: Final = "suspect"
_GONE: Final = "gone"
_ASK: Final = "ask"
_MEMBERS_QUERY: Final = "members?"
_MEMBERS: Final = "members"
_RING_ROLE: Final = "~ring"  # the catalogue entry that says "I take part in the ring"
_RING_ENTRY: Final = ["", _RING_ROLE, 0]


class Role(enum.Enum):
    """What a node does on a channel."""

    PUBLISHER = "pub"
    SUBSCRIBER = "sub"
    PUSHER = "push"
    PULLER = "pull"
    REPLIER = "rep"
    REQUESTER = "req"
    RELIABLE_PUSHER = "push+r"
    RELIABLE_PULLER = "pull+r"
    RELIABLE_PUBLISHER = "pub+r"
    RELIABLE_SUBSCRIBER = "sub+r"

    @property
    def binds(self) -> bool:
        """Whether this role listens (others connect to it): publisher, pullers, replier."""
        return self in _BINDERS

    @property
    def counterpart(self) -> Role:
        """The role this one talks to (publisher <-> subscriber, ...)."""
        return _COUNTERPART[self]


_BINDERS: Final = frozenset({Role.PUBLISHER, Role.PULLER, Role.REPLIER, Role.RELIABLE_PULLER,
                             Role.RELIABLE_PUBLISHER})
_COUNTERPART: Final = {
    Role.PUBLISHER: Role.SUBSCRIBER, Role.SUBSCRIBER: Role.PUBLISHER,
    Role.PUSHER: Role.PULLER, Role.PULLER: Role.PUSHER,
    Role.REPLIER: Role.REQUESTER, Role.REQUESTER: Role.REPLIER,
    Role.RELIABLE_PUSHER: Role.RELIABLE_PULLER, Role.RELIABLE_PULLER: Role.RELIABLE_PUSHER,
    Role.RELIABLE_PUBLISHER: Role.RELIABLE_SUBSCRIBER,
    Role.RELIABLE_SUBSCRIBER: Role.RELIABLE_PUBLISHER,
}
_ROLES: Final = {r.value: r for r in Role}
_MAX_ROLE: Final = 16  # bytes of an unknown role name a State may carry


@dataclass(frozen=True, slots=True)
class ChannelOffer:
    """One entry of a node's catalogue: ``role`` on channel ``name``, listening on
    ``port`` (0 for roles that connect rather than listen)."""

    name: str
    role: Role
    port: int = 0


@dataclass(frozen=True, slots=True)
class State:
    """A node's self-description (also its heartbeat)."""

    node_id: bytes
    epoch: int
    name: str
    addresses: tuple[str, ...]
    control_port: int
    revision: int
    channels: tuple[ChannelOffer, ...]
    ring: bool = False
    """The node takes part in the ring watch (``shoal._core._ring``)."""


@dataclass(frozen=True, slots=True)
class Beat:
    """A node's small heartbeat: the incarnation ``(node_id, epoch)`` is alive, and its
    catalogue stands at ``revision``."""

    node_id: bytes
    epoch: int
    revision: int


@dataclass(frozen=True, slots=True)
class Bye:
    """A node's goodbye: the incarnation ``(node_id, epoch)`` is gone."""

    node_id: bytes
    epoch: int


@dataclass(frozen=True, slots=True)
class Suspect:
    """To the incarnation ``(node_id, epoch)``: node ``by`` watches you and has not
    heard from you for a while; beat it."""

    node_id: bytes
    epoch: int
    by: bytes


@dataclass(frozen=True, slots=True)
class Gone:
    """Node ``by`` watched the incarnation ``(node_id, epoch)`` and it has been silent
    for the peer timeout."""

    node_id: bytes
    epoch: int
    by: bytes


@dataclass(frozen=True, slots=True)
class Ask:
    """Node ``by`` asks for the receiver's State."""

    by: bytes


@dataclass(frozen=True, slots=True)
class MembersQuery:
    """Node ``by`` asks which nodes the receiver knows."""

    by: bytes


@dataclass(frozen=True, slots=True)
class Members:
    """Node ``by``'s live peers, as (address, control port)."""

    by: bytes
    endpoints: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class ClockQuery:
    """A request for the receiver's wall clock; ``token`` (u32) comes back in the
    answer, so the asker can tell its answers from stale ones."""

    token: int


@dataclass(frozen=True, slots=True)
class ClockReading:
    """The answer to a ``ClockQuery``: the answering node's wall clock when it answered
    (``time_ns``: nanoseconds since the Unix epoch, u64) and the query's ``token``."""

    token: int
    time_ns: int


ControlMessage = (State | Beat | Bye | Suspect | Gone | Ask | MembersQuery | Members
                  | ClockQuery | ClockReading)
"""Whatever ``decode_control`` returns."""


class VersionMismatch(DecodeError):
    """The frame is a control message of another protocol version (``version``)."""

    def __init__(self, version: object) -> None:
        self.version = version
        super().__init__("unsupported-version", f"control protocol version {version!r}")


def encode_control(msg: ControlMessage) -> bytes:
    """Encode a control message. Raises ``EncodeError`` for any field out of bounds:
    whatever this returns, a peer's ``decode_control`` accepts."""
    fields: list[Any]
    if isinstance(msg, Bye):
        fields = [VERSION, _BYE, msg.node_id, msg.epoch]
    elif isinstance(msg, Beat):
        fields = [VERSION, _BEAT, msg.node_id, msg.epoch, msg.revision]
    elif isinstance(msg, Suspect):
        fields = [VERSION, _SUSPECT, msg.node_id, msg.epoch, msg.by]
    elif isinstance(msg, Gone):
        fields = [VERSION, _GONE, msg.node_id, msg.epoch, msg.by]
    elif isinstance(msg, Ask):
        fields = [VERSION, _ASK, msg.by]
    elif isinstance(msg, MembersQuery):
        fields = [VERSION, _MEMBERS_QUERY, msg.by]
    elif isinstance(msg, Members):
        if len(msg.endpoints) > MAX_MEMBERS:
            raise EncodeError(f"a member list holds at most {MAX_MEMBERS} endpoints")
        fields = [VERSION, _MEMBERS, msg.by, [[a, p] for a, p in msg.endpoints]]
    elif isinstance(msg, ClockQuery):
        fields = [VERSION, _CLOCK_QUERY, msg.token]
    elif isinstance(msg, ClockReading):
        fields = [VERSION, _CLOCK_READING, msg.token, msg.time_ns]
    else:
        if len(msg.channels) > MAX_CHANNELS or len(msg.addresses) > MAX_ADDRESSES:
            raise EncodeError(f"a node offers at most {MAX_CHANNELS} channels on at most "
                              f"{MAX_ADDRESSES} addresses")
        fields = [
            VERSION, _STATE, msg.node_id, msg.epoch, msg.name, list(msg.addresses),
            msg.control_port, msg.revision,
            [[c.name, c.role.value, c.port] for c in msg.channels]
            + ([_RING_ENTRY] if msg.ring else []),
        ]
    try:
        frame = bytes(msgpack.packb(fields))
    except (OverflowError, UnicodeEncodeError, TypeError, ValueError) as exc:
        raise EncodeError(f"cannot encode this control message: {exc}") from None
    # One set of rules: the decoder's. Control messages are small and rare (a catalogue
    # change, a heartbeat per link per interval), so checking by decoding is cheap.
    try:
        decode_control(frame)
    except DecodeError as exc:
        raise EncodeError(f"cannot send this control message ({exc}); "
                          "a peer would refuse it") from None
    return frame


def _fail(reason: str, detail: str = "") -> DecodeError:
    return DecodeError(reason, detail)


def _node_id(value: Any) -> bytes:
    if not isinstance(value, bytes) or len(value) != 16:
        raise _fail("bad-node-id")
    return value


def _u32(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value < 2**32:
        raise _fail("bad-field", what)
    return value


def _u64(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value < 2**64:
        raise _fail("bad-field", what)
    return value


def _port(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= 65535:
        raise _fail("bad-field", "port")
    return value


def _text(value: Any, limit: int, what: str) -> str:
    """A string of at most ``limit`` bytes of UTF-8 (the unit encode counts in)."""
    if not isinstance(value, str) or len(value) > limit or len(value.encode()) > limit:
        raise _fail("bad-field", what)
    return value


def _address(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 64:
        raise _fail("bad-field", "address")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise _fail("bad-field", "address") from None


def _channel(value: Any) -> ChannelOffer | None:
    """One catalogue entry, or None for a well-formed entry whose role this node does
    not know (a newer peer's role): the peer stays visible, that channel is skipped."""
    if not isinstance(value, list) or len(value) != 3:
        raise _fail("bad-field", "channel")
    name, role, port = value
    if not isinstance(role, str) or not 0 < len(role) <= _MAX_ROLE:
        raise _fail("bad-field", "channel role")
    offer_name, offer_port = _text(name, MAX_TOPIC, "channel name"), _port(port)
    r = _ROLES.get(role)
    return None if r is None else ChannelOffer(offer_name, r, offer_port)


def _members(value: Any) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, list) or len(value) > MAX_MEMBERS:
        raise _fail("bad-field", "members")
    out = []
    for entry in value:
        if not isinstance(entry, list) or len(entry) != 2:
            raise _fail("bad-field", "member")
        out.append((_address(entry[0]), _port(entry[1])))
    return tuple(out)


def decode_control(frame: bytes) -> ControlMessage:
    """Decode one control frame. Raises ``VersionMismatch`` for another protocol
    version and ``DecodeError`` for anything else that is not a valid message."""
    if len(frame) > _MAX_FRAME:
        raise _fail("too-large", str(len(frame)))
    try:
        obj = msgpack.unpackb(frame, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises many types for hostile input
        raise _fail("malformed", type(exc).__name__) from None
    if not isinstance(obj, list) or len(obj) < 2:
        raise _fail("malformed", "not a control message")
    if type(obj[0]) is not int or obj[0] != VERSION:
        raise VersionMismatch(obj[0] if isinstance(obj[0], int | str) else type(obj[0]).__name__)
    kind = obj[1]
    if kind == _BEAT and len(obj) == 5:
        return Beat(_node_id(obj[2]), _u32(obj[3], "epoch"), _u32(obj[4], "revision"))
    if kind == _BYE and len(obj) == 4:
        return Bye(_node_id(obj[2]), _u32(obj[3], "epoch"))
    if kind == _SUSPECT and len(obj) == 5:
        return Suspect(_node_id(obj[2]), _u32(obj[3], "epoch"), _node_id(obj[4]))
    if kind == _GONE and len(obj) == 5:
        return Gone(_node_id(obj[2]), _u32(obj[3], "epoch"), _node_id(obj[4]))
    if kind == _ASK and len(obj) == 3:
        return Ask(_node_id(obj[2]))
    if kind == _MEMBERS_QUERY and len(obj) == 3:
        return MembersQuery(_node_id(obj[2]))
    if kind == _MEMBERS and len(obj) == 4:
        return Members(_node_id(obj[2]), _members(obj[3]))
    if kind == _CLOCK_QUERY and len(obj) == 3:
        return ClockQuery(_u32(obj[2], "token"))
    if kind == _CLOCK_READING and len(obj) == 4:
        return ClockReading(_u32(obj[2], "token"), _u64(obj[3], "time"))
    if kind != _STATE or len(obj) != 9:
        # Never repr() what a peer sent: a deeply nested value overflows the stack.
        raise _fail("unknown-control",
                    kind[:40] if isinstance(kind, str) else type(kind).__name__)
    addresses, channels = obj[5], obj[8]
    if not isinstance(addresses, list) or len(addresses) > MAX_ADDRESSES:
        raise _fail("bad-field", "addresses")
    if not isinstance(channels, list) or len(channels) > MAX_CHANNELS:
        raise _fail("bad-field", "channels")
    return State(
        node_id=_node_id(obj[2]),
        epoch=_u32(obj[3], "epoch"),
        name=_text(obj[4], MAX_NAME, "name"),
        addresses=tuple(_address(a) for a in addresses),
        control_port=_port(obj[6]),
        revision=_u32(obj[7], "revision"),
        channels=tuple(c for c in map(_channel, channels) if c is not None),
        ring=_RING_ENTRY in channels,
    )
