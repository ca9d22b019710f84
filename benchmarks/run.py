"""shoal benchmarks: shoal against raw pyzmq, sender and receiver in separate processes.

Usage (from the repository root, with shoal installed in the active environment)::

    python benchmarks/run.py                  # full run, 3 to 4 minutes on 2 cores
    python benchmarks/run.py --quick          # short run, under a minute
    python benchmarks/run.py --json out.json  # also write every round's figures as JSON
    python benchmarks/run.py --only rr,pp --sizes 64 --rounds 7
    python benchmarks/run.py --sizes 64,4096,1048576   # 64 B, 4 KiB and 1 MiB bodies
    python benchmarks/run.py --backend trio,asyncio,uvloop  # shoal on each event loop

The suite itself (the variants, the method, the targets and the JSON document) lives
in ``shoal.cli._bench._suite``, whose docstring describes it; ``--help`` lists the
options.
"""

import sys

from shoal.cli._bench._suite._command import main

if __name__ == "__main__":
    sys.exit(main())
