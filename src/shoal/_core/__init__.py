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
from shoal._core._topics import Subscription, TopicFilter, literal_prefix, parse_subscription
from shoal._core._wiring import Route, local_route

__all__ = [
    "ACK_BATCH",
    "ACK_DELAY",
    "ACK_TOPIC",
    "HEADER",
    "LOST_TRACK",
    "MAX_ADDRESSES",
    "MAX_PREFIXES",
    "MAX_TOPIC",
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
    "Role",
    "Route",
    "State",
    "StreamEncoder",
    "StreamKey",
    "SubscriberAck",
    "SubscriberReceiver",
    "Subscription",
    "TopicFilter",
    "VersionMismatch",
    "WindowFull",
    "ack_tag",
    "choose_address",
    "correlation_at",
    "decode",
    "decode_control",
    "decode_pull_ack",
    "decode_subscriber_ack",
    "encode",
    "encode_control",
    "encode_topic",
    "fast_decode",
    "fast_decoder",
    "literal_prefix",
    "local_route",
    "offers",
    "pack_tail",
    "parse_subscription",
    "with_correlation",
]
