"""Compose the typed config from ``conf/`` and the command line's Hydra overrides.

The entry points (``optimizer.run``, ``optimizer.report``, ``optimizer.loadtest``) compose
``conf/`` with Hydra's compose API and Hydra override syntax (``key=value``, ``group=option``),
so a bad override is reported in one line with exit code 2 before anything starts, instead of a
traceback. Logging, signals and exit codes are :mod:`optimizer.core.entry`'s.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

from optimizer.commands.hardware_auto import resolve_hardware_overrides
from optimizer.core.errors import ConfigError
from optimizer.settings.config import Config, register_configs, to_config

__all__ = ["CONF_DIR", "compose", "compose_raw", "dump_config", "show_config"]

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_raw(overrides: Sequence[str], conf_dir: Path = CONF_DIR) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_configs()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        msg = str(exc).strip().replace("\n", " ")
        cause = exc.__cause__  # e.g. OmegaConf's "Invalid value 'x', expected one of [a, b]" under Hydra's
        if isinstance(cause, OmegaConfBaseException) and str(cause).strip():
            msg += ": " + str(cause).strip().splitlines()[0]
        raise ConfigError(f"{msg}. Options are the files in {conf_dir}/<group>/; keys are listed in "
                          f"conf/config.yaml and optimizer/settings/config.py.") from None


def compose(overrides: Sequence[str], conf_dir: Path = CONF_DIR) -> Config:
    raw = compose_raw(resolve_hardware_overrides(list(overrides), visible_devices=os.environ.get(
        "CUDA_VISIBLE_DEVICES"), conf_dir=conf_dir), conf_dir)  # hardware=auto; GPU presets -> search=gpu
    try:
        return to_config(raw)
    except ConfigError:
        raise
    except Exception as exc:  # OmegaConf interpolation or conversion errors
        raise ConfigError(f"invalid configuration: {exc}") from None


def dump_config(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def show_config(overrides: Sequence[str]) -> str:
    """The config ``overrides`` compose to, as YAML (what ``--cfg job`` prints)."""
    return dump_config(compose(overrides))
