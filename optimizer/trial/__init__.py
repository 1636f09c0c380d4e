"""One trial: a config's server started, loaded, checked after the load, and recorded.

- :mod:`~optimizer.trial.trial`: start -> load -> after-load -> record; returns the
  :class:`~optimizer.record.TrialRecord`.
- :mod:`~optimizer.trial.load` (:class:`~optimizer.trial.load.FixedLoad`) and
  :mod:`~optimizer.trial.capacity_load` (:class:`~optimizer.trial.capacity_load.CapacityLadder`):
  the load strategies, one per ``load.mode``.
- :mod:`~optimizer.trial.trial_quality`: the quality probe on the trial's warm server, and its
  grading against the study's reference.
- :mod:`~optimizer.trial.calibrate`: the latency limit of ``slo.p99_ms=auto``, calibrated by the
  baseline trial.
- :mod:`~optimizer.trial.noise`: a measurement's throughput interval (pure).
- :mod:`~optimizer.trial.gpus`: which GPUs a worker owns and a trial's server gets (pure).

The study (:mod:`optimizer.study`) runs trials; nothing here imports it.
"""
