"""shoal's sans-I/O core: envelope codec, sequence/gap bookkeeping, identities.

Nothing under ``shoal._core`` imports trio, zmq, zeroconf, socket, time or random:
the caller passes time and ids in, so every state machine here is a plain function
call that tests can drive deterministically.
"""

from shoal._core._envelope import (
    HEADER,
    MAX_TOPIC,
    VERSION,
    Kind,
    Message,
    StreamEncoder,
    decode,
    encode,
    encode_topic,
)
from shoal._core._gaps import GapTracker, StreamKey
from shoal._core._identity import Identity

__all__ = [
    "HEADER",
    "MAX_TOPIC",
    "VERSION",
    "GapTracker",
    "Identity",
    "Kind",
    "Message",
    "StreamEncoder",
    "StreamKey",
    "decode",
    "encode",
    "encode_topic",
]
