"""What every entry point does around its work: logging, signals, exit codes.

``python -m optimizer.run`` / ``.report`` / ``.loadtest`` and each worker process of a parallel
study run their body through :func:`run_guarded`: SIGTERM raises
:class:`~optimizer.core.errors.Terminated` in the main thread (so every ``finally``, the server stop
included, runs), and errors map to exit codes with a one-line message (tracebacks with
``--debug``): 0 done, 1 study stopped, 2 bad input, 130 Ctrl-C, 143 SIGTERM.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Callable, NoReturn, Optional, Sequence

from optimizer.core.errors import ConfigError, OptimizerError, StudyError, Terminated

__all__ = ["EXIT_CONFIG", "EXIT_INT", "EXIT_STUDY", "EXIT_TERM", "cfg_request", "main_wrapper", "run_guarded", "setup_logging",
           "split_args"]

EXIT_CONFIG, EXIT_STUDY, EXIT_INT, EXIT_TERM = 2, 1, 130, 143

log = logging.getLogger("optimizer")


def _on_sigterm(signum: int, frame: object) -> NoReturn:
    raise Terminated()


def setup_logging(log_file: Optional[Path] = None, debug: bool = False, tag: str = "") -> None:
    """Log to stderr (and ``log_file``); ``tag`` (a worker's name) starts every line."""
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    prefix = f"[{tag}] " if tag else ""
    fmt = logging.Formatter(f"%(asctime)s {prefix}%(message)s", "%H:%M:%S")
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(fmt)
    root.addHandler(h)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s"))
        root.addHandler(fh)
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    # the study logs each failed trial with its reason itself; Optuna's own message repeats it with a
    # traceback (shown with --debug)
    optuna.logging.set_verbosity(optuna.logging.DEBUG if debug else optuna.logging.ERROR)
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def split_args(argv: Sequence[str]) -> tuple[list[str], bool, bool]:
    """(overrides, --debug, --help)."""
    debug = "--debug" in argv or os.environ.get("OPTIMIZER_DEBUG") == "1"
    want_help = any(a in ("-h", "--help") for a in argv)
    return [a for a in argv if a not in ("--debug", "-h", "--help")], debug, want_help


def cfg_request(argv: Sequence[str]) -> tuple[list[str], Optional[str]]:
    """Hydra's ``--cfg job|hydra|all`` (also ``--cfg=job``, ``-c job``) taken out of ``argv``: (the rest,
    the part asked for or None); ``--resolve`` goes too (the config shown is always resolved)."""
    rest: list[str] = []
    part: Optional[str] = None
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("--cfg", "-c"):
            part = args[i + 1] if i + 1 < len(args) else ""
            i += 2
            continue
        if a.startswith("--cfg="):
            part = a.split("=", 1)[1]
        elif a != "--resolve":
            rest.append(a)
        i += 1
    return rest, part


def _show_config(show: Optional[Callable[[list[str]], str]], part: str, overrides: list[str]) -> int:
    if part not in ("job", "all", "hydra"):
        raise ConfigError(f"--cfg {part!r}: give job (the composed config), hydra or all, e.g. --cfg job")
    if show is None:
        raise ConfigError("--cfg: this command composes no config of its own; run it without --cfg")
    if part == "hydra":
        print("# the entry points compose conf/ with Hydra's compose API: no Hydra run config (output dirs, "
              "launcher) applies; --cfg job shows the composed config")
        return 0
    print(show(overrides), end="")
    return 0


def main_wrapper(body: Callable[[list[str], bool], int], usage: str, argv: Optional[Sequence[str]] = None,
                 show: Optional[Callable[[list[str]], str]] = None) -> int:
    """Run ``body(overrides, debug)`` with signal handling and the exit-code policy. With Hydra's
    ``--cfg job`` the body does not run: ``show(overrides)`` (the composed config as YAML) is printed."""
    overrides, debug, want_help = split_args(list(sys.argv[1:] if argv is None else argv))
    if want_help:
        print(usage)
        return 0
    overrides, part = cfg_request(overrides)
    if part is not None:
        return run_guarded(lambda: _show_config(show, part, overrides), debug)
    return run_guarded(lambda: body(overrides, debug), debug)


def run_guarded(call: Callable[[], int], debug: bool) -> int:
    """Run ``call()`` with SIGTERM raising :class:`Terminated`, and map errors to exit codes
    (2 bad input, 1 study stopped, 130 Ctrl-C, 143 SIGTERM) with a one-line message."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return call()
    except ConfigError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StudyError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_STUDY
    except Terminated:
        print("terminated (SIGTERM): the server was stopped and the trial recorded as interrupted; "
              "run the same command to resume", file=sys.stderr)
        return EXIT_TERM
    except KeyboardInterrupt:
        print("interrupted: the server was stopped and the trial recorded as interrupted; "
              "run the same command to resume", file=sys.stderr)
        return EXIT_INT
    except OptimizerError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_STUDY
