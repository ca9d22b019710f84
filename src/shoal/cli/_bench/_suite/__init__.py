"""The benchmark suite: shoal against raw pyzmq, sender and receiver in separate processes,
every variant of each pattern in one run. ``benchmarks/run.py`` runs it (its docstring
shows the usual invocations).

Options: ``--rounds N`` (default 5, ``--quick`` 3), ``--sizes 64,4096`` (body sizes in
bytes; 1048576 is 1 MiB), ``--rr-count N`` (timed round trips per round, default 5000)
and ``--rr-warmup N``, ``--tp-count N`` (timed messages per throughput round, default
200000) and ``--tp-bytes N`` (cap on count x size per round, default 192 MiB, so large
bodies send fewer messages, but never fewer than 200 unless the counts say so; it
caps round trips too, at count x 2 x size), ``--tp-warmup N``, ``--pp-hwm N``
(push/pull high-water mark, default 1000, the libzmq default), ``--ps-hwm N`` (pub/sub
high-water mark, default 100000), ``--busy-poll SECONDS`` (for "shoal busy-poll",
default 0.001), ``--only rr,pp,ps`` (which benchmarks), ``--backend trio,asyncio,uvloop``
(the event loops shoal's variants run on, below; default ``trio``), ``--json FILE``.

What is measured. Everything runs over TCP on 127.0.0.1 only. Two worker processes
(``multiprocessing`` with the spawn start method) are started once and reused; for each
measurement one of them binds and the other connects, so the two sides always run in
different processes. Every body is ``bytes`` of exactly the given size: raw pyzmq sends
it as the whole frame; shoal sends it raw too (no msgpack), inside its one-frame
envelope (topic + NUL + 52-byte header + body). Variants are interleaved (A, B, C, then
B, C, A...) over the rounds, and the tables show the median over rounds. A variant
that needs an API this shoal does not have yet is shown as "not available" and not run.

Event loops. Every shoal variant runs once per backend given to ``--backend``, both of
its ends on that loop, started the way an application starts it: ``trio.run(main)``,
``asyncio.run(main())`` (the default selector loop) or ``uvloop.run(main())``. The
shoal side is the same code on each (shoal's API, AnyIO for its sleeps, deadlines,
task groups and threads), except the checkpoint of "nowait-send": trio's own under
trio, ``anyio.lowlevel.checkpoint()`` under asyncio. A shoal variant on each loop is
one more variant of the same interleaved rotation as the baselines, so one run
compares them all. With trio alone (the default) the names and the report are the
ones below; with more loops, trio's variants keep their names and the others carry
the loop: "shoal [asyncio]", "shoal batch [uvloop]". If uvloop cannot be imported,
its variants are shown as "not available". The baselines (raw pyzmq, pyzmq.asyncio on
asyncio's default loop, "trio FD") run once, as always.

CPU time. Beside every figure, each worker reports the CPU time it spent per message
(per round trip for ``rr``), from process CPU time (``time.process_time_ns``: every
thread, libzmq's I/O thread included), read at the edges of its timed part only (the
clock is a system call, about 0.6 us). Beside it, the main thread's CPU time over the
same span (``time.thread_time_ns``: the thread that runs Python, so shoal's own cost
without libzmq's I/O thread; the CPU targets are per main thread). The tables show
the median over rounds of each side; it is steadier than wall time on a shared
machine.

* ``rr``: the client over its timed round trips; the server from its reply to the last
  warmup request to its last reply (the same round trips).
* ``pp``/``ps`` receiver: over its timed window (below), divided by the messages in it.
* ``pp``/``ps`` sender: a sender cannot tell which of its messages libzmq's I/O thread
  is still writing (up to a high-water mark of them; a whole round of 1 MiB bodies),
  so its clock runs from its first send until the receiver reports the last arrival
  (waiting blocked on a pipe meanwhile, which costs no CPU), divided by every message
  sent, warmup included.

* ``rr`` -- request/reply round-trip latency, one request in flight. Each stack talks
  to itself: shoal requester -> shoal replier ("shoal"), the same with
  ``busy_poll=--busy-poll`` on both ends ("shoal busy-poll": a receiver polls that
  long before parking on the socket's FD), blocking pyzmq REQ -> REP ("pyzmq"),
  pyzmq.asyncio REQ -> REP under asyncio, and "trio FD": a pyzmq DEALER -> ROUTER (the
  sockets shoal uses) driven by bare trio, no shoal -- send NOBLOCK, then read
  ``EVENTS`` and recv NOBLOCK if POLLIN, else ``trio.lowlevel.wait_readable(FD)`` and
  look again. It is the floor a trio library over pyzmq starts from. The replier
  echoes the body. After a warmup, every round trip is timed on its own
  (``perf_counter_ns`` around ``request()`` / ``send()+recv()``); a round reports p50,
  p99 and p99.9 (nearest rank). The replier closes only after the client has said
  (over a pipe) that it has every reply.
* ``pp`` -- push/pull throughput. The puller binds and the pusher sends warmup + count
  messages as fast as it can (``await push.send()`` / ``sock.send()``, with
  backpressure, so nothing is lost). The *receiver* measures: it notes the time and
  its message count once the warmup has arrived (t0, c0) and when the last message
  arrives (t1, c1); the rate is (c1 - c0) / (t1 - t0). shoal's receiver uses
  ``receive_batch()`` ("shoal batch") and, as another variant, plain ``async for``.
  "shoal send_many" keeps the batch receiver and sends with ``await
  push.send_many(bodies)``, 256 bodies a call. "shoal nowait-send" sends with
  ``push.send_nowait()`` (falling back to ``await push.send()`` on
  ``shoal.errors.WouldBlock``, which is both trio's and AnyIO's) and one checkpoint
  per 256 messages (``trio.lowlevel.checkpoint()``; ``anyio.lowlevel.checkpoint()``
  on asyncio and uvloop): it shows what the sender gains by yielding less often than
  ``await send()`` does. A round of fewer than 4096
  timed messages (large bodies) opens shoal's receivers with ``batch=count/8``, so
  that a backlog drained in one batch cannot swallow the whole timed window.
* ``ps`` -- pub/sub throughput, measured like ``pp``. The publisher binds and keeps
  publishing probe messages (shoal topic ``bench.probe``; raw: empty frames) until the
  subscriber reports over a pipe that one arrived, so the subscription is in place
  before the timed messages start (no slow joiner). PUB drops at its high-water mark
  (counted in messages, so 1 MiB bodies queue up to count x 1 MiB, well within it), so
  both sides use a large one, and the table reports any loss (sent - received). If
  messages were lost the subscriber stops after 0.5 s without traffic. "shoal
  send_many" publishes with ``await pub.publish_many(items)``, 256 ``(topic, body)``
  items a call; "shoal nowait-send" with ``pub.publish_nowait()`` plus one checkpoint
  per 256. "shoal wildcard" is "shoal batch" with the subscriber's topics
  ``["bench/**", "bench.probe"]``: every timed message goes through the wildcard
  filter and matches (libzmq filters on the literal prefix ``bench``).

Reliable variants ("shoal reliable"), same method: ``rr`` with ``request(body,
retries=3)`` (a retry timer per request; the replier's duplicate cache is always on);
``pp`` with ``open_pusher/open_puller(reliable=True)`` (windowed, acknowledged when the
application asks for the next item); ``ps`` with ``open_publisher/open_subscriber(
reliable=True)``, where the publisher waits for the subscriber's hello instead of
probing, and nothing can be lost. "shoal reliable many" is the same with batches of
256 (``send_many`` / ``publish_many``); the reliable target takes the faster of the
two.

Targets, printed as information (pass/fail, never assertions), after the tables and
in the JSON (``targets``). "Best effort" is the faster (median msgs/s) of "shoal
batch" and "shoal send_many", named in each line; every other variant's ratio to
raw pyzmq is printed too.

* push/pull throughput, best effort / raw pyzmq PUSH/PULL: >= 0.6x at 64 B, >= 0.85x
  at 4 KiB, >= 0.9x at 1 MiB (no target at other sizes);
* pub/sub throughput, best effort / raw PUB/SUB: >= 0.5x at 64 B, >= 0.85x at 4 KiB,
  >= 0.9x at 1 MiB;
* request/reply p50: "shoal" <= 1.15x "trio FD" (same run); "shoal busy-poll" <= 1.2x
  blocking pyzmq;
* CPU per message, push/pull 64 B, best effort: sending <= 0.7 us, receiving <= 1.0 us;
* reliable push/pull and pub/sub throughput >= 0.6x best effort;
* pub/sub 64 B, "shoal wildcard" >= 0.9x "shoal batch" (every message matching).

With ``--backend``, the throughput, reliable, wildcard and CPU targets and the
busy-poll one are checked for each chosen loop (its own best best effort, e.g. "shoal
send_many [uvloop]"); "shoal/trio FD" is trio's. And, across loops, when both are
chosen:

* request/reply p50: "shoal [uvloop]" <= 1.1x "shoal" (trio);
* request/reply p50: "shoal [asyncio]" <= 1.0x "pyzmq.asyncio" (asyncio chosen);
* push/pull and pub/sub 64 B: best effort on uvloop >= 1/1.1 (0.909x) of best effort on
  trio (msgs/s; each loop's faster of "shoal batch" and "shoal send_many").

The output starts with the machine's load average before and after the run, and calls
the run "quiet" if the 1-minute average was below 0.5 at the start, else "loaded".
``--json`` writes ``environment`` (with AnyIO's and uvloop's versions when they
run), ``load`` (``before``, ``after``, ``label``), ``config`` (``backends`` among
them), ``summary`` (per bench, size and variant: the medians, CPU included, and
the ``ratios``), ``targets`` (``target``, ``value``, ``op``, ``limit``, ``unit``,
``verdict`` and the best-effort ``variant``) and ``rounds`` (every round's figures:
``cpu_client_us``/``cpu_server_us`` for ``rr``, ``cpu_send_us``/``cpu_recv_us``
otherwise, each with its ``main_...`` twin for the main thread).

Where it lives: ``_common`` (the measurement's description, the variants and their
names per loop, running a side on a loop, the CPU clock, percentiles, what a side
reports), ``_rr`` and ``_throughput`` (each side of
each variant, run in a worker process), ``_run`` (the worker processes and the
rounds), ``_report`` (tables, ratios, targets), ``_command`` (options, load, JSON).
"""
