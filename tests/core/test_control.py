"""The node control protocol codec (sans-I/O): ``State`` and ``Bye`` survive the round
trip, ``encode_control`` refuses what is out of bounds with ``EncodeError``, a frame of
another protocol version is recognised (``VersionMismatch``), and hostile bytes only
ever produce ``DecodeError`` with a stable ``reason``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal._core import (
    MAX_TOPIC,
    VERSION,
    Bye,
    ChannelOffer,
    Role,
    State,
    VersionMismatch,
    decode_control,
    encode_control,
)
from shoal._core._control import MAX_ADDRESSES, MAX_CHANNELS, MAX_NAME, ClockQuery, ClockReading
from shoal.errors import DecodeError, EncodeError, LocalProtocolError, RemoteProtocolError

U32 = 2**32 - 1
MAX_FRAME = 256 * 1024
NODE = bytes(range(16))

STATE = State(
    node_id=NODE, epoch=7, name="node", addresses=("10.0.0.1",), control_port=5555,
    revision=3, channels=(ChannelOffer("ch", Role.PUBLISHER, 6000),),
)
BYE = Bye(NODE, 7)


def state(**changes: Any) -> State:
    return dataclasses.replace(STATE, **changes)


# The wire layout of a valid State, field by field (index into the msgpack array).
I_NODE, I_EPOCH, I_NAME, I_ADDRS, I_PORT, I_REV, I_CHANNELS = 2, 3, 4, 5, 6, 7, 8


def state_fields() -> list[Any]:
    return [VERSION, "state", NODE, 7, "node", ["10.0.0.1"], 5555, 3, [["ch", "pub", 6000]]]


def state_with(index: int, value: Any) -> bytes:
    """A valid State frame with one field replaced."""
    fields = state_fields()
    fields[index] = value
    return bytes(msgpack.packb(fields))


def channel_with(value: Any) -> bytes:
    """A valid State frame whose one channel entry is ``value``."""
    return state_with(I_CHANNELS, [value])


def bye_with(node_id: Any = NODE, epoch: Any = 7) -> bytes:
    return bytes(msgpack.packb([VERSION, "bye", node_id, epoch]))


def decode_state(frame: bytes) -> State:
    msg = decode_control(frame)
    assert isinstance(msg, State)
    return msg


def reason_of(frame: bytes) -> str:
    with pytest.raises(DecodeError) as info:
        decode_control(frame)
    return info.value.reason


# -- round trip --------------------------------------------------------------------------


def test_a_state_survives_the_round_trip() -> None:
    assert decode_control(encode_control(STATE)) == STATE


def test_a_bye_survives_the_round_trip() -> None:
    assert decode_control(encode_control(BYE)) == BYE


@pytest.mark.parametrize("epoch", [0, 1, U32])
def test_every_u32_epoch_survives_the_round_trip(epoch: int) -> None:
    assert decode_control(encode_control(Bye(NODE, epoch))) == Bye(NODE, epoch)
    assert decode_control(encode_control(state(epoch=epoch, revision=epoch))) == state(
        epoch=epoch, revision=epoch)


@pytest.mark.parametrize("role", list(Role))
def test_every_role_survives_the_round_trip(role: Role) -> None:
    s = state(channels=(ChannelOffer("ch", role, 6000 if role.binds else 0),))
    assert decode_control(encode_control(s)) == s


@pytest.mark.parametrize("port", [0, 1, 65535])
def test_ports_at_the_bounds_survive_the_round_trip(port: int) -> None:
    s = state(control_port=port, channels=(ChannelOffer("ch", Role.PULLER, port),))
    assert decode_control(encode_control(s)) == s


def test_unicode_names_survive_the_round_trip() -> None:
    s = state(name="nœud-ノード-😀", channels=(
        ChannelOffer("température/°C", Role.PUBLISHER, 6000),
        ChannelOffer("チャンネル/😀", Role.REPLIER, 6001),
    ))
    assert decode_control(encode_control(s)) == s


def test_the_largest_catalogue_survives_the_round_trip() -> None:
    s = state(
        name="n" * MAX_NAME,
        addresses=tuple(f"10.0.0.{i}" for i in range(MAX_ADDRESSES)),
        channels=tuple(ChannelOffer(f"ch/{i}", list(Role)[i % 6], i % 65536)
                       for i in range(MAX_CHANNELS)),
    )
    assert decode_control(encode_control(s)) == s


def test_a_state_may_list_no_addresses_and_no_channels() -> None:
    s = state(addresses=(), channels=())
    assert decode_control(encode_control(s)) == s


def test_ipv6_addresses_survive_the_round_trip() -> None:
    s = state(addresses=("fe80::1", "2001:db8::42", "10.1.2.3"))
    assert decode_control(encode_control(s)) == s


def test_decoding_spells_addresses_canonically() -> None:
    """What a peer sends is normalised, so the same address always compares equal."""
    frame = state_with(I_ADDRS, ["FE80:0:0::1", "2001:DB8::42"])
    assert decode_state(frame).addresses == ("fe80::1", "2001:db8::42")


def test_encoding_is_deterministic() -> None:
    assert encode_control(STATE) == encode_control(state())


names = st.text(max_size=60)  # at most 240 bytes of UTF-8: within MAX_NAME
addresses = st.ip_addresses().map(str)
offers_st = st.builds(ChannelOffer, st.text(max_size=30), st.sampled_from(Role),
                      st.integers(0, 65535))
states = st.builds(
    State,
    node_id=st.binary(min_size=16, max_size=16),
    epoch=st.integers(0, U32),
    name=names,
    addresses=st.lists(addresses, max_size=8).map(tuple),
    control_port=st.integers(0, 65535),
    revision=st.integers(0, U32),
    channels=st.lists(offers_st, max_size=8).map(tuple),
)
byes = st.builds(Bye, st.binary(min_size=16, max_size=16), st.integers(0, U32))


@settings(max_examples=100, deadline=None)
@given(states | byes)
def test_any_valid_message_survives_the_round_trip(msg: State | Bye) -> None:
    assert decode_control(encode_control(msg)) == msg


# -- encode refuses what is out of bounds ------------------------------------------------


def test_encode_refuses_too_many_channels() -> None:
    too_many = tuple(ChannelOffer(f"c{i}", Role.SUBSCRIBER) for i in range(MAX_CHANNELS + 1))
    with pytest.raises(EncodeError, match="channels"):
        encode_control(state(channels=too_many))


def test_encode_refuses_a_name_over_max_name_bytes() -> None:
    with pytest.raises(EncodeError, match="name"):
        encode_control(state(name="n" * (MAX_NAME + 1)))


def test_the_name_limit_counts_utf8_bytes_not_characters() -> None:
    assert decode_control(encode_control(state(name="é" * 127))) == state(name="é" * 127)
    with pytest.raises(EncodeError):
        encode_control(state(name="é" * 128))  # 128 characters, 256 bytes


def test_encode_error_is_the_callers_mistake() -> None:
    """EncodeError is a LocalProtocolError (and a TypeError), never a remote one."""
    with pytest.raises(EncodeError) as info:
        encode_control(state(name="n" * 1000))
    assert isinstance(info.value, LocalProtocolError)
    assert isinstance(info.value, TypeError)
    assert not isinstance(info.value, RemoteProtocolError)


@pytest.mark.parametrize("changes", [
    pytest.param({"addresses": tuple(f"10.0.0.{i}" for i in range(MAX_ADDRESSES + 1))},
                 id="too-many-addresses"),
    pytest.param({"channels": (ChannelOffer("c" * (MAX_TOPIC + 1), Role.PUBLISHER, 1),)},
                 id="channel-name-too-long"),
    pytest.param({"node_id": b"short"}, id="node-id-length"),
    pytest.param({"epoch": -1}, id="negative-epoch"),
    pytest.param({"epoch": 2**64}, id="epoch-over-u64-raises-OverflowError"),
    pytest.param({"revision": 2**32}, id="revision-over-u32"),
    pytest.param({"control_port": 65536}, id="control-port"),
    pytest.param({"channels": (ChannelOffer("ch", Role.PUBLISHER, -1),)}, id="channel-port"),
    pytest.param({"addresses": ("localhost",)}, id="address-not-an-ip"),
    pytest.param({"name": "\udc80"}, id="lone-surrogate-raises-UnicodeEncodeError"),
    pytest.param({"channels": (ChannelOffer("\udc80", Role.PUBLISHER, 1),)},
                 id="lone-surrogate-in-channel-name"),
])
def test_encode_refuses_every_state_that_decode_would_refuse(changes: dict[str, Any]) -> None:
    """The contract: "Raises EncodeError if a field is out of bounds". A State that
    encodes must decode on the other side, or the node is silently invisible to peers."""
    with pytest.raises(EncodeError):
        encode_control(state(**changes))


@pytest.mark.parametrize("bye", [Bye(b"short", 1), Bye(NODE, -1), Bye(NODE, 2**32)])
def test_encode_refuses_a_bye_that_decode_would_refuse(bye: Bye) -> None:
    with pytest.raises(EncodeError):
        encode_control(bye)


# -- another protocol version ------------------------------------------------------------


@pytest.mark.parametrize("version", [0, VERSION + 1, 255, 2**40, "1", "2.0"])
def test_another_protocol_version_is_a_version_mismatch(version: int | str) -> None:
    for fields in (state_fields(), [VERSION, "bye", NODE, 7]):
        fields[0] = version
        with pytest.raises(VersionMismatch) as info:
            decode_control(bytes(msgpack.packb(fields)))
        assert info.value.version == version
        assert info.value.reason == "unsupported-version"
        assert isinstance(info.value, DecodeError)


def test_a_version_mismatch_is_recognised_whatever_follows_the_version() -> None:
    """A future version may lay its fields out differently: only the first two
    elements are looked at."""
    frame = bytes(msgpack.packb([VERSION + 1, {"new": "layout"}, None]))
    with pytest.raises(VersionMismatch) as info:
        decode_control(frame)
    assert info.value.version == VERSION + 1


@settings(max_examples=50, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                               max_size=3),
    max_leaves=8,
))
def test_the_reported_version_is_always_hashable(version: Any) -> None:
    """The node keeps the versions it has warned about in a set."""
    reported: object = None
    try:
        decode_control(bytes(msgpack.packb([version, "bye", NODE, 7])))
    except VersionMismatch as exc:
        reported = exc.version
    except DecodeError:
        return
    hash(reported)
    assert reported is None or isinstance(reported, int | str)


# -- malformed input: DecodeError with a stable reason -----------------------------------


@pytest.mark.parametrize("frame", [
    pytest.param(b"", id="empty"),
    pytest.param(b"\xc1", id="reserved-byte"),
    pytest.param(encode_control(STATE)[:-1], id="truncated"),
    pytest.param(encode_control(BYE) + b"\x00", id="trailing-bytes"),
    pytest.param(b"\x94\x01\xa3bye\xc4\x10" + NODE + b"\xce\x00", id="truncated-int"),
    pytest.param(b"\x92\x01\xa2\xff\xfe", id="invalid-utf8-string"),
    pytest.param(bytes(msgpack.packb({1: 2})), id="map-with-int-keys"),
])
def test_bytes_that_are_not_msgpack_are_malformed(frame: bytes) -> None:
    assert reason_of(frame) == "malformed"


@pytest.mark.parametrize("obj", [
    None, 1, "state", b"state", {"version": VERSION}, [], [VERSION],
], ids=repr)
def test_a_frame_that_is_not_a_list_of_at_least_two_is_malformed(obj: Any) -> None:
    assert reason_of(bytes(msgpack.packb(obj))) == "malformed"


@pytest.mark.parametrize("fields", [
    [VERSION, "hello", NODE, 7],
    [VERSION, "BYE", NODE, 7],
    [VERSION, 1, NODE, 7],
    [VERSION, None],
    [VERSION, "bye"],
    [VERSION, "bye", NODE],
    [VERSION, "bye", NODE, 7, "extra"],
    [VERSION, "beat", NODE, 7],
    [VERSION, "beat", NODE, 7, 3, "extra"],
    state_fields()[:-1],
    [*state_fields(), "extra"],
], ids=repr)
def test_an_unknown_kind_or_length_is_an_unknown_control(fields: list[Any]) -> None:
    assert reason_of(bytes(msgpack.packb(fields))) == "unknown-control"


@pytest.mark.parametrize("node_id", [b"", NODE[:15], NODE + b"\x00", NODE.hex(), "x" * 16,
                                     None, 0, [0] * 16], ids=repr)
def test_a_node_id_that_is_not_16_bytes_is_a_bad_node_id(node_id: Any) -> None:
    assert reason_of(state_with(I_NODE, node_id)) == "bad-node-id"
    assert reason_of(bye_with(node_id=node_id)) == "bad-node-id"


@pytest.mark.parametrize("epoch", [-1, 2**32, 2**64 - 1, -(2**63), 1.0, "7", None, True],
                         ids=repr)
def test_an_epoch_outside_u32_is_a_bad_field(epoch: Any) -> None:
    assert reason_of(state_with(I_EPOCH, epoch)) == "bad-field"
    assert reason_of(bye_with(epoch=epoch)) == "bad-field"


@pytest.mark.parametrize("revision", [-1, 2**32, 1.5, "3", None, False], ids=repr)
def test_a_revision_outside_u32_is_a_bad_field(revision: Any) -> None:
    assert reason_of(state_with(I_REV, revision)) == "bad-field"


@pytest.mark.parametrize("port", [-1, 65536, 2**32, 80.0, "80", None, True], ids=repr)
def test_a_port_outside_0_to_65535_is_a_bad_field(port: Any) -> None:
    assert reason_of(state_with(I_PORT, port)) == "bad-field"
    assert reason_of(channel_with(["ch", "pub", port])) == "bad-field"


@pytest.mark.parametrize("name", [b"node", None, 1, ["node"], "n" * (MAX_NAME + 1)], ids=repr)
def test_a_name_that_is_not_a_short_string_is_a_bad_field(name: Any) -> None:
    assert reason_of(state_with(I_NAME, name)) == "bad-field"


@pytest.mark.parametrize("role", ["", "r" * 17, 1, None, b"pub", ["pub"]], ids=repr)
def test_a_role_that_is_not_a_short_string_is_a_bad_field(role: Any) -> None:
    assert reason_of(channel_with(["ch", role, 6000])) == "bad-field"


@pytest.mark.parametrize("role", ["publisher", "PUB", "Role.PUBLISHER", "pub+x", "r" * 16],
                         ids=repr)
def test_a_channel_with_a_role_this_node_does_not_know_is_skipped(role: Any) -> None:
    """A newer peer offering a role added later stays visible; only that channel is
    left out, the known ones around it are kept."""
    frame = state_with(I_CHANNELS, [["a", "pub", 6000], ["b", role, 6001], ["c", "rep", 6002]])
    state = decode_control(frame)
    assert isinstance(state, State)
    assert [(c.name, c.role) for c in state.channels] == [("a", Role.PUBLISHER),
                                                          ("c", Role.REPLIER)]


def test_an_unknown_role_entry_is_still_checked_for_name_and_port() -> None:
    assert reason_of(channel_with(["c" * (MAX_TOPIC + 1), "future", 6000])) == "bad-field"
    assert reason_of(channel_with(["ch", "future", 70000])) == "bad-field"


@pytest.mark.parametrize("channel", [
    "ch", None, ["ch", "pub"], ["ch", "pub", 6000, 0], {"ch": "pub"},
    [b"ch", "pub", 6000], [None, "pub", 6000], ["c" * (MAX_TOPIC + 1), "pub", 6000],
], ids=lambda c: repr(c)[:40])
def test_a_malformed_channel_entry_is_a_bad_field(channel: Any) -> None:
    assert reason_of(channel_with(channel)) == "bad-field"


@pytest.mark.parametrize("address", [
    "localhost", "example.com", "1.2.3", "256.0.0.1", "01.2.3.4", "1.2.3.4/24", "::g",
    "10.0.0.1 ", "", "1" * 65, b"\x0a\x00\x00\x01", 167772161, None, ["10.0.0.1"],
], ids=lambda a: repr(a)[:40])
def test_an_address_that_is_not_an_ip_address_is_a_bad_field(address: Any) -> None:
    assert reason_of(state_with(I_ADDRS, [address])) == "bad-field"
    assert reason_of(state_with(I_ADDRS, ["10.0.0.1", address])) == "bad-field"


@pytest.mark.parametrize("value", ["10.0.0.1", None, {"a": 1}, b"10.0.0.1"], ids=repr)
def test_addresses_and_channels_must_be_lists(value: Any) -> None:
    assert reason_of(state_with(I_ADDRS, value)) == "bad-field"
    assert reason_of(state_with(I_CHANNELS, value)) == "bad-field"


def test_more_than_max_addresses_is_a_bad_field() -> None:
    ok = [f"10.0.0.{i}" for i in range(MAX_ADDRESSES)]
    assert len(decode_state(state_with(I_ADDRS, ok)).addresses) == MAX_ADDRESSES
    assert reason_of(state_with(I_ADDRS, [*ok, "10.0.1.1"])) == "bad-field"


def test_more_than_max_channels_is_a_bad_field() -> None:
    ok = [[f"c{i}", "sub", 0] for i in range(MAX_CHANNELS)]
    assert len(decode_state(state_with(I_CHANNELS, ok)).channels) == MAX_CHANNELS
    assert reason_of(state_with(I_CHANNELS, [*ok, ["c", "sub", 0]])) == "bad-field"


def test_the_size_of_an_oversized_list_is_refused_before_its_entries_are_looked_at() -> None:
    """A list too long is refused as such, even if its entries are garbage too."""
    assert reason_of(state_with(I_ADDRS, [None] * (MAX_ADDRESSES + 1))) == "bad-field"
    assert reason_of(state_with(I_CHANNELS, [None] * (MAX_CHANNELS + 1))) == "bad-field"


def frame_of_size(size: int) -> bytes:
    """A valid State frame of exactly ``size`` bytes: full-length channels, then two
    whose names (256..1024 characters, so their msgpack headers do not change) take up
    the rest."""
    def frame(full: int, a: int, b: int) -> bytes:
        # packed by hand: encode_control itself refuses to produce an oversized frame
        chans = [["c" * MAX_TOPIC, "pub", 6000]] * full + [["c" * n, "pub", 6000] for n in (a, b)]
        return state_with(8, chans)

    for full in range(MAX_CHANNELS - 2):
        room = size - len(frame(full, 256, 256))
        if 0 <= room <= 2 * (MAX_TOPIC - 256):
            a = min(room, MAX_TOPIC - 256)
            out = frame(full, 256 + a, 256 + room - a)
            assert len(out) == size
            return out
    raise AssertionError("unreachable")


def test_a_frame_of_exactly_256_kib_is_accepted() -> None:
    decode_state(frame_of_size(MAX_FRAME))


def test_a_frame_over_256_kib_is_too_large() -> None:
    assert reason_of(frame_of_size(MAX_FRAME + 1)) == "too-large"
    assert reason_of(b"\x00" * (MAX_FRAME + 1)) == "too-large"


def test_decode_errors_are_remote_protocol_errors() -> None:
    with pytest.raises(RemoteProtocolError):
        decode_control(b"\xc1")


# -- fuzz: State, Bye or DecodeError, and nothing else -----------------------------------


def decodes_or_refuses(frame: bytes) -> None:
    """The decode contract: a well-typed State, Bye, ClockQuery or ClockReading, or
    DecodeError. Nothing else."""
    reason: object = None
    try:
        msg = decode_control(frame)
    except DecodeError as exc:
        reason = exc.reason
    if reason is not None:
        assert isinstance(reason, str)
        assert reason
        return
    assert isinstance(msg, State | Bye | ClockQuery | ClockReading)
    if isinstance(msg, ClockQuery | ClockReading):
        assert 0 <= msg.token <= U32
        if isinstance(msg, ClockReading):
            assert 0 <= msg.time_ns < 2**64
        return
    assert isinstance(msg.node_id, bytes)
    assert len(msg.node_id) == 16
    assert 0 <= msg.epoch <= U32
    if isinstance(msg, State):
        assert 0 <= msg.control_port <= 65535
        assert 0 <= msg.revision <= U32
        assert isinstance(msg.name, str)
        assert len(msg.addresses) <= MAX_ADDRESSES
        assert len(msg.channels) <= MAX_CHANNELS
        assert all(isinstance(a, str) for a in msg.addresses)
        for c in msg.channels:
            assert isinstance(c.role, Role)
            assert isinstance(c.name, str)
            assert 0 <= c.port <= 65535


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    decodes_or_refuses(data)


@settings(max_examples=150, deadline=None)
@given(states | byes, st.sampled_from(("truncate", "flip", "insert", "delete", "append")),
       st.data())
def test_mutated_valid_frames_decode_or_raise_decode_error(
    msg: State | Bye, how: str, data: st.DataObject
) -> None:
    frame = encode_control(msg)
    at = data.draw(st.integers(0, len(frame) - 1), label="at")
    byte = data.draw(st.integers(0, 255), label="byte")
    if how == "truncate":
        frame = frame[:at]
    elif how == "flip":
        frame = frame[:at] + bytes([frame[at] ^ (byte or 1)]) + frame[at + 1:]
    elif how == "insert":
        frame = frame[:at] + bytes([byte]) + frame[at:]
    elif how == "delete":
        frame = frame[:at] + frame[at + 1:]
    else:
        frame += data.draw(st.binary(min_size=1, max_size=16), label="tail")
    decodes_or_refuses(frame)


anything = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=70) | st.binary(max_size=20)
    | st.sampled_from(["state", "bye", *(r.value for r in Role), "10.0.0.1", "::1"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                               max_size=3),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_valid_frames_with_arbitrary_fields_decode_or_raise_decode_error(
    data: st.DataObject,
) -> None:
    """Structured fuzz: any field of a valid State or Bye (or of a channel entry)
    replaced by an arbitrary msgpack value."""
    fields = data.draw(st.sampled_from([state_fields(), [VERSION, "bye", NODE, 7]]))
    for i in data.draw(st.sets(st.integers(1, len(fields) - 1), max_size=3), label="fields"):
        fields[i] = data.draw(anything, label=f"field {i}")
    if len(fields) == 9 and data.draw(st.booleans(), label="fuzz the channel"):
        fields[I_CHANNELS] = [data.draw(st.lists(anything, min_size=3, max_size=3))]
    decodes_or_refuses(bytes(msgpack.packb(fields)))


# -- roles -------------------------------------------------------------------------------


def test_role_wire_values_are_stable() -> None:
    """They are protocol: changing one breaks every older peer."""
    assert {r.name: r.value for r in Role} == {
        "PUBLISHER": "pub", "SUBSCRIBER": "sub", "PUSHER": "push", "PULLER": "pull",
        "REPLIER": "rep", "REQUESTER": "req",
        "RELIABLE_PUSHER": "push+r", "RELIABLE_PULLER": "pull+r",
        "RELIABLE_PUBLISHER": "pub+r", "RELIABLE_SUBSCRIBER": "sub+r",
    }


@pytest.mark.parametrize(("role", "binds"), [
    (Role.PUBLISHER, True), (Role.SUBSCRIBER, False),
    (Role.PUSHER, False), (Role.PULLER, True),
    (Role.REPLIER, True), (Role.REQUESTER, False),
    (Role.RELIABLE_PULLER, True), (Role.RELIABLE_PUSHER, False),
    (Role.RELIABLE_PUBLISHER, True), (Role.RELIABLE_SUBSCRIBER, False),
])
def test_publishers_pullers_and_repliers_bind(role: Role, binds: bool) -> None:
    assert role.binds is binds


@pytest.mark.parametrize(("role", "counterpart"), [
    (Role.PUBLISHER, Role.SUBSCRIBER), (Role.PUSHER, Role.PULLER),
    (Role.REPLIER, Role.REQUESTER), (Role.RELIABLE_PUSHER, Role.RELIABLE_PULLER),
    (Role.RELIABLE_PUBLISHER, Role.RELIABLE_SUBSCRIBER),
])
def test_each_role_talks_to_its_counterpart(role: Role, counterpart: Role) -> None:
    assert role.counterpart is counterpart
    assert counterpart.counterpart is role


@pytest.mark.parametrize("role", list(Role))
def test_counterpart_is_an_involution_and_exactly_one_side_binds(role: Role) -> None:
    assert role.counterpart is not role
    assert role.counterpart.counterpart is role
    assert role.binds is not role.counterpart.binds
