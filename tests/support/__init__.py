"""What shoal's tests share: waiting, endpoints, peers in other processes, raw peers.

Tests import from here (``from support.waiting import eventually``), never from one
another. ``tests/`` is on ``sys.path`` during the run (pytest's rootdir-relative
import of test modules puts it there), which is what makes ``support`` importable.

Network safety: everything handed out here binds or connects to 127.0.0.1, an
``ipc://`` path under a test's ``tmp_path``, or a process-unique ``inproc://`` name.
"""
