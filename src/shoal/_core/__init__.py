"""shoal's sans-I/O core: envelope codec, sequence/gap bookkeeping, identities.

Nothing under ``shoal._core`` imports trio, zmq, zeroconf, socket, time or random:
the caller passes time and ids in, so every state machine here is a plain function
call that tests can drive deterministically.
"""

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
    decode,
    encode,
    encode_topic,
    fast_decode,
    fast_decoder,
    pack_tail,
)
from shoal._core._fanout import (
    LOST_TRACK,
    RESUME,
    START,
    ChainReceiver,
    Dropped,
    FanoutSender,
)
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

__all__ = [
    "HEADER",
    "LOST_TRACK",
    "MAX_ADDRESSES",
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
    "ReliableSender",
    "Role",
    "State",
    "StreamEncoder",
    "StreamKey",
    "VersionMismatch",
    "WindowFull",
    "choose_address",
    "decode",
    "decode_control",
    "encode",
    "encode_control",
    "encode_topic",
    "fast_decode",
    "fast_decoder",
    "offers",
    "pack_tail",
]
