"""The pub/sub slow-joiner handshake: know that subscribers hear a publisher.

A SUB's subscriptions reach the publisher some time after it connects; until then
libzmq drops what is published to it. ``sync_subscribers`` waits for the moment a
test can rely on, with no fixed sleep.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import anyio

from shoal import Message, Subscriber

_probes = itertools.count()

PROBE_PREFIX = "__shoal-test-probe__/"
"""Topics starting with this are the handshake's; tests never publish on them."""

PROBE_PATIENCE = 0.01
"""How long one round of the handshake waits for a probe before publishing another."""


async def sync_subscribers(
    publish: Callable[[str, Any], object], *subs: Subscriber
) -> list[list[Message]]:
    """The pub/sub handshake: returns once every subscriber provably hears ``publish``.

    Each subscriber subscribes to a fresh probe topic; probes are published in a loop
    until every subscriber has received one (so its subscriptions, made earlier, are in
    force at the publisher: libzmq applies a pipe's subscriptions in order). Then one
    fence is published and every subscriber reads up to it. A publisher's messages
    reach a subscriber in order, so afterwards nothing published before the call is
    still on its way.

    Returns, per subscriber, the non-probe messages that arrived before the fence
    (empty when the handshake is done before anything is published).
    """
    topic = f"{PROBE_PREFIX}{next(_probes)}/"
    fence = {"fence": topic}
    for sub in subs:
        sub.subscribe(topic)
    got: list[list[Message]] = [[] for _ in subs]
    heard = [False] * len(subs)

    def take(i: int, msg: Message) -> None:
        if msg.topic == topic:
            heard[i] = True
        elif not msg.topic.startswith(PROBE_PREFIX):
            got[i].append(msg)

    n = 0
    while not all(heard):
        publish(topic, {"probe": n})
        n += 1
        for i, sub in enumerate(subs):
            if heard[i]:
                # keep draining, or probes could fill its queue and drop the fence
                while True:
                    try:
                        take(i, sub.receive_nowait())
                    except anyio.WouldBlock:
                        break
                continue
            with anyio.move_on_after(PROBE_PATIENCE):
                while not heard[i]:
                    take(i, await sub.receive())
    publish(topic, fence)
    for i, sub in enumerate(subs):
        while True:
            msg = await sub.receive()
            if msg.topic == topic and msg.body == fence:
                break
            take(i, msg)
    for sub in subs:
        sub.unsubscribe(topic)
    return got
