"""Plotly reports of a study: ``reports/<study>/index.html`` with ``best.yaml`` and ``trials.csv``.

Three steps, each its own module: :mod:`~optimizer.reporting.data` turns trials into small
tuples (pure, tested without a browser), :mod:`~optimizer.reporting.figures` draws them,
:mod:`~optimizer.reporting.html` assembles one offline page; :mod:`~optimizer.reporting.write`
loads the study and writes the files.
"""

from optimizer.reporting.write import best_yaml, trials_frame, write_report, write_study_report

__all__ = ["best_yaml", "trials_frame", "write_report", "write_study_report"]
