"""The confirmation stage: a study's answer re-measured on fresh servers, and the recommendation.

- :mod:`~optimizer.confirmation.plan`: which configs run, in which rounds and on which GPU groups,
  derived from the study database alone (pure).
- :mod:`~optimizer.confirmation.stage`: the runner (``python -m optimizer.confirm``, and the end of
  ``python -m optimizer.run``); its runs are stored in the study as confirmation trials.
- :mod:`~optimizer.confirmation.confirm_result`, :mod:`~optimizer.confirmation.uplift`,
  :mod:`~optimizer.confirmation.know_more`: the stage's result read from the stored runs, its
  statistics and recommendation rule, and what it would take to know more (pure).
- :mod:`~optimizer.confirmation.revalidation` and :mod:`~optimizer.confirmation.revalidation_result`:
  the same stage on another vLLM, and its comparison with the study's (``python -m optimizer.revalidate``).

The report reads the pure modules and never the runners (``stage``, ``revalidation``).
"""
