"""``shoal bench``: latency and throughput of each pattern, shoal beside raw pyzmq.

``_common`` (run description, body layout, pacing, receiver tally), ``_server`` (the
end that binds), ``_client`` (the end that connects and measures), ``_run`` (a whole
run: interleaved rounds, figures per variant), ``_report`` (table, JSON, plot).
"""
