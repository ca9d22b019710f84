"""Benchmarks: latency and throughput of each pattern, shoal beside raw pyzmq.

Two front ends share this package: ``shoal bench`` (a client that measures and a
server that binds, on one host or two; stamped bodies, HDR histograms, pacing, CURVE)
and the suite that ``benchmarks/run.py`` runs (``_suite``: every variant of each
pattern on one host, baselines beside shoal's, targets). Both run shoal's side on
trio, asyncio or uvloop (``--backend``; the suite takes several at once). What both
need (the order of interleaved rounds, which openers take ``busy_poll=``, running on a
chosen loop) is in ``_common``.

``shoal bench``: ``_common`` (run description, body layout, pacing, receiver tally),
``_server`` (the end that binds), ``_client`` (the end that connects and measures),
``_run`` (a whole run: interleaved rounds, figures per variant), ``_report`` (table,
JSON, plot), ``_command`` (the command line). ``shoal bench --hedge`` and
``benchmarks/hedging.py`` share ``_hedge`` (hedged requests against a replier that
stalls: the replier processes and the variants) and ``_hedge_report`` (its table,
text latency plot and JSON).

The one exception to the command line's rule of public names only: the baselines are
raw pyzmq sockets (and, in the suite, a pyzmq socket driven by bare trio), opened
here on purpose, beside shoal's public API. Nothing here imports a private shoal
module.
"""
