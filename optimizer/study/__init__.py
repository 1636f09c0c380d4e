"""The study: trials asked of the sampler, run and told, stored, resumed, shared by workers.

- :mod:`~optimizer.study.loop`: ask the sampler, run the trial (:mod:`optimizer.trial`), tell the
  outcome; resume where it stopped.
- :mod:`~optimizer.study.storage`, :mod:`~optimizer.study.coordination`,
  :mod:`~optimizer.study.filelock`: opening the study's storage, its identity checks, and the
  locks that let several workers share it.
- :mod:`~optimizer.study.workers`: one loop per GPU group of this host.
- :mod:`~optimizer.study.stopping`, :mod:`~optimizer.study.progress`: when the study stops
  starting trials, and the line shown after each.
- :mod:`~optimizer.study.versions`: a resumed study that meets another vLLM.
- :mod:`~optimizer.study.staged`: a one-knob-at-a-time sampler (benchmarks/search_replay.py compares it
  with the study's own).
- :mod:`~optimizer.study.results`: the study's answer, read from its trials (pure; the report reads it).

The confirmation stage (:mod:`optimizer.confirmation`) runs after the loop and imports it; nothing
here imports the confirmation stage.
"""
