"""``shoal demo``: nine nodes on loopback find each other, talk, and survive a crash.

The nodes:

* in this process: an observer (reports what discovery sees), a sensor (publishes
  telemetry and hands out jobs over reliable push/pull), two subscribers (every room,
  and room1 only; both count gaps), a calculator (replier) and its client (requester:
  several requests in flight, and one bad request that fails cleanly);
* three workers, each a process of its own (``shoal.cli._demo_worker``) taking jobs slowly
  enough to hold a few. A third of the way through, one is killed with SIGKILL while
  it holds unfinished jobs; the pusher redelivers them to the others; later the
  killed worker starts again as a new incarnation.

Each worker reports on its stdout every job it gets and every job it is done with
(acknowledged), so the demo knows what the killed worker held. At the end it checks
and says: every job sent was processed exactly once; the jobs handed out more than
once are exactly those the killed worker held unfinished (handed again to another
worker); every request was answered (the bad one with an error); every reading reached
its subscribers without gaps. The exit status is 0
when all of that holds, 1 when not (or the demo could not run), 130 after Ctrl-C.

Output: on a terminal, a status panel redrawn in place four times a second (ANSI
codes); otherwise, or with ``--plain``, one line per event and a summary, with no
escape codes. ``--seconds`` is how long the traffic runs once the nodes have found
each other (which takes two to four seconds more).

The rooms: ``_scenario`` (the nodes of this process and the traffic), ``_workers`` (the
worker processes and their reports), ``_panel`` (the lines and the live panel), and
``_command`` (the checks, the verdict and the command line).

Network safety: every node (its sockets and its mDNS) is pinned to 127.0.0.1, under a
DNS-SD service type of this run's own, so that two demos on one machine never mix.
Every worker process is killed and reaped on every way out (the end, an error,
Ctrl-C); a worker also leaves by itself when its stdin closes, so that it never
outlives the demo.
"""

from shoal.cli._demo._command import add_demo_command, run_demo, run_demo_command
from shoal.cli._demo._workers import DemoFailed

__all__ = ["DemoFailed", "add_demo_command", "run_demo", "run_demo_command"]
