"""What every package of the optimizer stands on; imports nothing else of it.

- :mod:`~optimizer.core.errors`: the exception tree, one base (``OptimizerError``).
- :mod:`~optimizer.core.entry`: what every process does around its work (each entry point and each
  worker of a parallel study): logging, signals, and the exit code each error maps to.
- :mod:`~optimizer.core.stats` (pure): order statistics, the distribution-free interval of a quantile.
- :mod:`~optimizer.core.auth`: the API-key header, written once.
"""
