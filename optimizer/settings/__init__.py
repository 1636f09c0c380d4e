"""The one typed configuration, built at the entry point and passed down in slices.

- :mod:`~optimizer.settings.config`: the whole config (``Config``), its Hydra schemas and its checks.
- :mod:`~optimizer.settings.knobs`: the knob table, from which everything about a search knob is derived.
- :mod:`~optimizer.settings.search_config`: the ``search`` section, derived from the knob table.
- :mod:`~optimizer.settings.load_config`: the ``workload`` and ``load`` sections.
- :mod:`~optimizer.settings.choices`: the closed sets of choices, as string enums.

It reads no file and no environment variable: Hydra composes the YAML of ``conf/`` against these
schemas at the entry point (:mod:`optimizer.commands.cli`).
"""
