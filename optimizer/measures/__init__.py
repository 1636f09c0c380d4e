"""What a load run measured and what a trial scores. Pure: plain values in, plain values out.

- :mod:`~optimizer.measures.metrics`: request records to a load summary (percentiles, their
  confidence intervals, throughput, errors); an empty sample is NaN with its count, never 0.
- :mod:`~optimizer.measures.objective`: a summary to the trial's value and its constraints.

The request records come from :mod:`optimizer.loadgen`; the trial record (:mod:`optimizer.record`)
stores what these compute, and the report reads it from there.
"""
