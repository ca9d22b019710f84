"""The contract between a discovery source and the node that runs it.

A source finds other nodes' control endpoints and *reports* them; it never acts on the
node. The node decides everything else, the same way for every source: which of a
peer's addresses to use (one on a network this node shares), whether the peer's key
is trusted, when to introduce itself (and again while the peer is not reached: after
a partition, a restart), and when to let a link go.

The node starts each source once, in a task of its own::

    await task_group.start(source.discover, own, reports)

``own`` (``Advertisement``) is what this node would say about itself (a source that
announces, as mDNS does, announces that). ``reports`` (``Reports``) takes ``Found`` and
``Lost`` records and answers two questions a source may use to pace itself
(``reached``, ``unreached``). ``discover`` calls ``task_status.started()`` once it
works, and runs until cancelled (the node closing), or returns once it has nothing
more to report (a fixed list). It must not block the event loop's thread.

Records name an *instance*: the source's own name for one advertised node, unique
within the source (mDNS: the DNS-SD instance name; a static list: the endpoint). A
``Found`` for an instance replaces the previous one; ``Lost`` withdraws it.

Never here: an import of the node, trust decisions, connections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import anyio
from anyio.abc import TaskStatus

__all__ = ["Advertisement", "Found", "Lost", "Reports", "Source"]


@dataclass(frozen=True, slots=True)
class Advertisement:
    """What a node says about itself, for sources that announce it."""

    name: str
    node_id: bytes
    """16 bytes."""
    epoch: int
    """This incarnation (a fresh number every time the node starts)."""
    addresses: tuple[str, ...]
    """The addresses the node listens on."""
    control_port: int
    public_key: bytes | None = None
    """The node's CURVE public key (Z85); None for a plaintext node."""

    @property
    def id(self) -> str:
        """The node id as 32 hex digits (``Node.id``)."""
        return self.node_id.hex()


@dataclass(frozen=True, slots=True)
class Found:
    """A node found at one of ``endpoints`` (``tcp://ADDRESS:PORT``, one per address it
    advertises; the node picks one on a network it shares)."""

    instance: str
    endpoints: tuple[str, ...]
    public_key: bytes | None = None
    """Its CURVE public key (Z85), as advertised or configured; None: plaintext."""
    node_id: bytes | None = None
    """Its node id (16 bytes), if the source knows it: a secured node then asks its
    trust policy about the pair before introducing itself."""
    steady: bool = False
    """True: the source vouches for the endpoint until it reports ``Lost`` (a configured
    list): the node keeps a link open there, which libzmq keeps reconnecting, so a
    node that starts later or restarts is found as soon as it listens. False: a
    sighting (an advertisement): the node introduces itself, keeps the link for a
    grace period, and introduces itself again while the instance stands and is not
    a live peer."""


@dataclass(frozen=True, slots=True)
class Lost:
    """The source withdraws ``instance`` (its advertisement was withdrawn)."""

    instance: str


class Reports(Protocol):
    """Where a source reports what it finds (one per source: instance names are its own)."""

    def report(self, record: Found | Lost) -> None:
        """Take a record. Never blocks; call it from the event loop's thread only. Raises
        ``LocalProtocolError`` for a malformed record (an endpoint that is not
        ``tcp://HOST:PORT``, a key that is not Z85, a node id that is not 16 bytes)."""

    def reached(self) -> frozenset[str]:
        """Instances found whose node is a live peer now."""

    def unreached(self) -> frozenset[str]:
        """Instances found whose node is not a live peer, with no introduction under
        way (nothing connects there now): worth looking up again."""


class Source(Protocol):
    """A discovery source (``shoal.discovery.MDNS``, ``Static``, or your own)."""

    @property
    def interfaces(self) -> tuple[str, ...] | None:
        """Addresses this source works on, which the node then listens on by default
        (None: no preference). A plain attribute will do."""

    async def discover(self, own: Advertisement, reports: Reports, *,
                       task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Find nodes and report them until cancelled; ``task_status.started()`` once
        running. May raise ``LocalProtocolError`` before starting (a misconfiguration)."""
