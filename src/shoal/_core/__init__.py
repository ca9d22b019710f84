"""shoal's sans-I/O core: envelope codec, reliability state machines and their
acknowledgements, sequence/gap bookkeeping, peer table, routes, identities.

Nothing under ``shoal._core`` imports trio, zmq, zeroconf, socket, time or random:
the caller passes time and ids in, so every state machine here is a plain function
call that tests can drive deterministically.
"""

from shoal._core._ack_batching import ACK_BATCH, ACK_DELAY, PullReceiver, SubscriberReceiver
from shoal._core._acks import (
    ACK_TOPIC,
    MAX_PREFIXES,
    PullAck,
    SubscriberAck,
    ack_tag,
    decode_pull_ack,
    decode_subscriber_ack,
)
from shoal._core._control import (
    MAX_ADDRESSES,
    Bye,
    ChannelOffer,
    Role,
    State,
    VersionMismatch,
    decode_control,
    encode_control,
)
from shoal._core._envelope import (
    HEADER,
    MAX_TOPIC,
    SPLIT_AT,
    VERSION,
    Kind,
    Message,
    ReplayedMessage,
    StreamEncoder,
    correlation_at,
    decode,
    encode,
    encode_topic,
    pack_tail,
    with_correlation,
)
from shoal._core._fanout import (
    LOST_TRACK,
    RESUME,
    START,
    ChainReceiver,
    Dropped,
    FanoutSender,
)
from shoal._core._fast import fast_decode, fast_decoder
from shoal._core._gaps import GapTracker, StreamKey
from shoal._core._history import (
    ALL,
    MARKER,
    MAX_HISTORY_PREFIXES,
    REQUEST,
    HistoryStore,
    bundles,
    decode_bundle,
    decode_request,
    encode_request,
)
from shoal._core._identity import Identity
from shoal._core._peers import (
    Peer,
    PeerEvent,
    PeerJoined,
    PeerLeft,
    PeerTable,
    PeerUpdated,
    choose_address,
    offers,
)
from shoal._core._reliable import Deduplicator, GaveUp, ReliableSender, WindowFull
from shoal._core._wiring import Route, local_route

__all__ = [
    "ACK_BATCH",
    "ACK_DELAY",
    "ACK_TOPIC",
    "ALL",
    "HEADER",
    "LOST_TRACK",
    "MARKER",
    "MAX_ADDRESSES",
    "MAX_HISTORY_PREFIXES",
    "MAX_PREFIXES",
    "MAX_TOPIC",
    "REQUEST",
    "RESUME",
    "SPLIT_AT",
    "START",
    "VERSION",
    "Bye",
    "ChainReceiver",
    "ChannelOffer",
    "Deduplicator",
    "Dropped",
    "FanoutSender",
    "GapTracker",
    "GaveUp",
    "HistoryStore",
    "Identity",
    "Kind",
    "Message",
    "Peer",
    "PeerEvent",
    "PeerJoined",
    "PeerLeft",
    "PeerTable",
    "PeerUpdated",
    "PullAck",
    "PullReceiver",
    "ReliableSender",
    "ReplayedMessage",
    "Role",
    "Route",
    "State",
    "StreamEncoder",
    "StreamKey",
    "SubscriberAck",
    "SubscriberReceiver",
    "VersionMismatch",
    "WindowFull",
    "ack_tag",
    "bundles",
    "choose_address",
    "correlation_at",
    "decode",
    "decode_bundle",
    "decode_control",
    "decode_pull_ack",
    "decode_request",
    "decode_subscriber_ack",
    "encode",
    "encode_control",
    "encode_request",
    "encode_topic",
    "fast_decode",
    "fast_decoder",
    "local_route",
    "offers",
    "pack_tail",
    "with_correlation",
]
