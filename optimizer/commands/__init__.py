"""What the commands share, below the entry modules at the top of the package (``python -m
optimizer.run``, ``.report``, ``.confirm``, ``.revalidate``, ``.loadtest``, ``.quality``).

- :mod:`~optimizer.commands.cli`: ``conf/`` and the Hydra overrides typed on the command line,
  composed into the one typed config; ``--cfg job``.
- :mod:`~optimizer.commands.hardware_auto`: which hardware preset a command means (``hardware=auto``).
- :mod:`~optimizer.commands.input_checks`: input that another setting makes irrelevant is refused;
  the folders the run writes to are created or refused.
- :mod:`~optimizer.commands.live_server`: a running server seen from outside (its model, its
  ``/metrics`` counters, its prefix cache), for the commands that test one that is already up.
- :mod:`~optimizer.commands.loadtest_capacity`, :mod:`~optimizer.commands.loadtest_output`: the
  load test's capacity search and what it prints and writes.
- :mod:`~optimizer.commands.quality_check`: the body of ``python -m optimizer.quality``.
- :mod:`~optimizer.commands.dry_run`: ``python -m optimizer.run dry_run=true``: the server command of
  each candidate with its verdict, nothing started.

Logging, signals and exit codes are :mod:`optimizer.core.entry`'s, since the workers of a parallel
study need them too.
"""
