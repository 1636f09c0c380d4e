"""``python -m optimizer.quality``: the command's name. Its code is the entry point
:mod:`optimizer.commands.quality_check` (among the other entry points, above the study); the probe package
itself holds none, so nothing in it imports a layer above its own."""

import runpy

runpy.run_module("optimizer.commands.quality_check", run_name="__main__", alter_sys=True)
