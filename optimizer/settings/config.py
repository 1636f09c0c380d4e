"""The one typed configuration, built at the entry point and passed down in slices.

Hydra composes YAML from ``conf/`` against these dataclass schemas (registered in the
ConfigStore by :func:`register_configs`), so a misspelled key or a wrong type fails at compose
time. :func:`to_config` turns the composed ``DictConfig`` into these dataclasses and checks
ranges (:func:`validate`); after that no code sees a ``DictConfig`` or the environment. The
sections of their own live beside it (``search``: :mod:`optimizer.settings.search_config`, derived from
the knob table :mod:`optimizer.settings.knobs`; ``workload`` and ``load``: :mod:`optimizer.settings.load_config`);
every schema is frozen (:class:`optimizer.settings.knobs.Frozen`): change a copy with ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from omegaconf import MISSING, DictConfig, OmegaConf

from optimizer.core.errors import ConfigError
from optimizer.settings.choices import Device, Launcher, QualityMode, SloMetric
from optimizer.settings.knobs import NUMERICS_PARAMS, FloatRange, Frozen, IntRange
from optimizer.settings.load_config import CapacityConfig, LoadConfig, WorkloadConfig, validate_load, validate_workload
from optimizer.settings.search_config import SearchConfig, validate_search

__all__ = [
    "AUTO_FACTOR_AT_LOAD",
    "AUTO_FACTOR_UNLOADED",
    "CapacityConfig",
    "Config",
    "ConfirmConfig",
    "FloatRange",
    "HardwareConfig",
    "IntRange",
    "LoadConfig",
    "ModelConfig",
    "QualityConfig",
    "SearchConfig",
    "ServerConfig",
    "SloConfig",
    "StudyConfig",
    "WorkloadConfig",
    "register_configs",
    "to_config",
    "validate",
]


@dataclass
class HardwareConfig(Frozen):
    """One accelerator preset: what it can run and how much memory it has."""

    name: str = MISSING
    device: Device = Device.cuda
    gpu_name: str = ""
    gpu_mem_gib: float = 0.0  # per GPU
    compute_capability: float = 0.0
    mem_bandwidth_gbs: float = 0.0
    gpu_count: int = 1
    supports_bf16: bool = True
    supports_fp8: bool = False  # fp8 W8A8 weights
    supports_fp8_kv: bool = False
    # CPU only: memory that vLLM's CPU backend may use for the KV cache (VLLM_CPU_KVCACHE_SPACE)
    cpu_kvcache_gib: float = 0.0
    # The GPUs of this host the study may use (nvidia-smi indexes). Empty: the ones nvidia-smi lists
    # (within CUDA_VISIBLE_DEVICES when that is set). Parallel workers split them (study.workers).
    gpu_ids: list[int] = field(default_factory=list)
    # Flags every server on this hardware gets (not searched), e.g. --enforce-eager on the CPU.
    fixed_args: list[str] = field(default_factory=list)
    # What the search space assumes vLLM's defaults are here: grid points, the baseline trial's place in the
    # space (its Optuna params), the memory estimate. Not what vLLM uses: the baseline trial records the
    # defaults the installed vLLM resolves (TrialRecord.vllm_defaults), and the study warns where they differ.
    vllm_defaults: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig(Frozen):
    """A model: where its files are, and the architecture numbers the memory estimate needs."""

    name: str = MISSING
    path: str = ""  # local directory; empty with `generate` set: the package builds it
    generate: str = ""  # "tiny": the package writes a tiny random Llama model; "config": config+tokenizer only
    load_format: str = "auto"  # auto | dummy (random weights, no download)
    served_name: str = ""
    # the model's Hugging Face id: best.yaml names it where the study served a generated folder
    # (model.generate); nothing is ever downloaded with it
    hub_id: str = ""
    max_model_len: int = 2048
    num_layers: int = 0
    hidden_size: int = 0
    intermediate_size: int = 0
    num_attention_heads: int = 0
    num_kv_heads: int = 0
    head_dim: int = 0
    vocab_size: int = 0
    num_params_b: float = 0.0  # billions
    dtype: str = "bfloat16"  # the checkpoint's dtype
    # quantization method -> local checkpoint directory ("" = same as `path`, e.g. online fp8)
    variants: dict[str, str] = field(default_factory=dict)
    # the first and last token ids to draw random prompts from (avoids special tokens)
    prompt_token_low: int = 1000
    prompt_token_high: int = 0  # 0: vocab_size - 300


# slo.auto_factor's defaults, at the study's load and unloaded (capacity mode): optimizer.trial.calibrate says why
AUTO_FACTOR_AT_LOAD = 3.0
AUTO_FACTOR_UNLOADED = 1.5


@dataclass
class SloConfig(Frozen):
    metric: SloMetric = SloMetric.e2e
    # the P99 limit in ms, or "auto": slo.auto_factor x the median latency of vLLM's defaults (the
    # baseline trial) at the study's load on this host (load.mode=capacity: at one user, unloaded),
    # measured once per study (optimizer.trial.calibrate)
    p99_ms: Union[int, float, str] = 5000.0
    # slo.p99_ms=auto only; None (the default): AUTO_FACTOR_AT_LOAD, or AUTO_FACTOR_UNLOADED in capacity mode
    auto_factor: Optional[float] = None
    max_error_rate: float = 0.0
    use_upper_bound: bool = False  # judge feasibility on the P99's upper confidence bound

    @property
    def is_auto(self) -> bool:
        return self.p99_ms == "auto"

    @property
    def limit_ms(self) -> float:
        """The limit in ms. Raises RuntimeError for an ``auto`` SLO not calibrated yet."""
        if isinstance(self.p99_ms, str):
            raise RuntimeError("slo.p99_ms=auto has no limit until the study calibrates it "
                               "(optimizer.trial.calibrate.resolved)")
        return float(self.p99_ms)


@dataclass
class ConfirmConfig(Frozen):
    """The confirmation stage (:mod:`optimizer.confirmation.stage`): the baseline and the ``top_k`` best
    feasible distinct configs, each started on a fresh server ``repeats`` times in interleaved
    rounds, measured on held-out prompts (workload seed + ``seed_offset`` + round)."""

    top_k: int = 3  # 0: no confirmation
    repeats: int = 3  # rounds; an interval needs at least 2
    confidence: float = 0.95  # of the uplift's interval (block design on the log scale, simultaneous over the configs)
    # a simpler config (fewer flags changed) that beats the defaults replaces the best only when shown to lose at
    # most this share of its throughput (non-inferiority); 5 % = load.capacity.resolution's default: see
    # optimizer/confirmation/uplift.py
    margin: float = 0.05
    seed_offset: int = 1000  # held-out prompts: the study's prompts use workload.seed itself


@dataclass
class StudyConfig(Frozen):
    name: str = ""  # empty: derived from model, hardware and workload
    storage: str = ""  # empty: sqlite:///studies/<name>.db
    n_trials: int = 6  # finished trials the study should hold; a re-run tops it up
    seed: int = 0
    enqueue_baseline: bool = True
    # configs to measure first, after the baseline: each is vLLM's defaults with these changes, e.g.
    # [{quantization: fp8}, {kv_cache_dtype: fp8}] (one knob at a time); keys are search parameters
    # the space samples. Added to a resumed study when new; the sampler learns from them as from any
    enqueue: list[dict[str, Any]] = field(default_factory=list)
    max_consecutive_env_failures: int = 3
    max_retries: int = 1  # retries of a trial interrupted by an environmental fault
    # parallel trials on this host, each on its own GPUs (as many as the largest tensor_parallel_size
    # choice); 0: as many as the GPUs allow. More than one needs a server database (PostgreSQL).
    workers: int = 1
    host: str = ""  # this host's name in the trial records (user attr `worker` = <host>/w<i>); empty: hostname
    # a trial whose worker stops beating for heartbeat_grace_s is failed and retried by another worker
    heartbeat_interval_s: int = 30
    heartbeat_grace_s: int = 180
    runs_dir: str = "runs"  # trial folders (server logs) go to runs/<study>/trial-NNNN
    # wall-clock minutes this command may spend (null: no limit): no trial starts unless the median
    # measured trial time of the study still fits; all workers of the command share it
    budget: Optional[float] = None
    # end the study after this many trials in a row gained nothing beyond noise over the best (null: off)
    patience: Optional[int] = None
    # patience: a gain needs more than this fraction over the best when the best has no throughput
    # interval (capacity trials); with one, more than its upper bound
    patience_min_gain: float = 0.02
    confirm: ConfirmConfig = field(default_factory=ConfirmConfig)


@dataclass
class ServerConfig(Frozen):
    host: str = "127.0.0.1"
    module: str = "vllm.entrypoints.openai.api_server"  # run as `python -m <module> <vLLM flags>`
    # plain: a new interpreter per start; forkserver: fork each start from a process that imported
    # vLLM's API server once (saves that import per trial; docs/start-time.md). 16-75 s per start on an H200
    launcher: Launcher = Launcher.plain
    python: str = ""  # interpreter that runs vLLM; empty: this one
    start_timeout_s: float = 600.0
    stop_timeout_s: float = 30.0
    free_wait_s: float = 120.0  # wait for GPU memory and port to be released
    api_key_env: str = ""  # name of an env var holding the API key (never the key itself)
    cache_dir: str = ".cache"  # generated models and the servers' pid files persist here
    # vLLM's compile cache (VLLM_CACHE_ROOT), shared by every trial of every study on this host; empty:
    # vLLM's own default, $VLLM_CACHE_ROOT or $XDG_CACHE_HOME/vllm or ~/.cache/vllm (optimizer/server/environment.py)
    compile_cache_dir: str = ""
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


# engine parameters that change the numbers a model computes (EngineParams field names)
NUMERICS_PARAM_CHOICES = NUMERICS_PARAMS  # EngineParams field names (settings.knobs: the knobs marked numerics)


_QUALITY_DATA = Path(__file__).resolve().parents[1] / "quality" / "data"  # the shipped quality sets


@dataclass
class QualityConfig(Frozen):
    """The quality probe (teacher-forced next-token distributions, a task check and greedy answers,
    each against the baseline config's) and its gate, the ``quality`` constraint. Limits are in the
    field's units (nats of KL divergence, shares of positions or tasks); the gate uses the larger of a
    limit and ``floor_multiple`` times the study's measured noise floor (README, "Quality gate")."""

    mode: QualityMode = QualityMode.gate  # off | measure (record only) | gate (a constraint: violations are infeasible)
    # mean per-position KL divergence from the reference (a lower bound: top-k + one "rest" bucket).
    # llama.cpp's KLD figures for an 8B model: Q8_0 0.00024, Q5_K_M 0.0047, Q3_K_M 0.051 (ggml-org/llama.cpp#5076;
    # ../shared/reference/landscape-2026-12.md section 3): 0.005 admits Q5_K_M-level changes, no worse
    max_mean_kld: float = 0.005
    # 99th percentile of the per-position KLD: the tail a mean hides (a few positions broken badly). No published
    # anchor in our references; chosen here as 20x the mean limit, so a change that moves the 1 % worst positions
    # by 0.1 nat fails even when the mean passes
    max_p99_kld: float = 0.1
    # share of positions whose most likely next token is the reference's: llama.cpp Q5_K_M 96.5 %, Q8_0 99.2 %
    min_same_top1: float = 0.97
    floor_multiple: float = 3.0  # a limit is at least this many times the baseline's distance from itself
    # the task check: a trial that loses more tasks than it wins with McNemar's exact p below this is rejected
    task_alpha: float = 0.05
    # speculative decoding: at the first token where a greedy answer differs from the reference's, each side's
    # pick must be among the other's top spec_top_n
    spec_top_n: int = 5
    top_k: int = 8  # prompt_logprobs per position (at most the server's --max-logprobs, 20 by default)
    max_tokens: int = 48  # tokens per greedy generation of the prompts
    task_max_tokens: int = 16  # tokens per task answer (it stops at a newline)
    # optimizer/quality/data/<dataset>.json; quality-v2-ci: its CI-sized subset (a probe ~40 % shorter,
    # coarser verdicts: README, Quality gate)
    dataset: str = "quality-v2"
    # a trial whose value of any of these differs from the baseline's is probed (and gated)
    numerics_params: list[str] = field(default_factory=lambda: list(NUMERICS_PARAM_CHOICES))


@dataclass
class Config(Frozen):
    hardware: HardwareConfig = MISSING
    model: ModelConfig = MISSING
    workload: WorkloadConfig = MISSING
    search: SearchConfig = MISSING
    load: LoadConfig = field(default_factory=LoadConfig)
    slo: SloConfig = field(default_factory=SloConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    dry_run: bool = False
    report: bool = True
    reports_dir: str = "reports"


def register_configs() -> None:
    """Register the schemas so that ``conf/**.yaml`` files can extend them."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    cs.store(group="hardware", name="base_hardware", node=HardwareConfig)
    cs.store(group="model", name="base_model", node=ModelConfig)
    cs.store(group="workload", name="base_workload", node=WorkloadConfig)
    cs.store(group="search", name="base_search", node=SearchConfig)


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def default_study_name(model: ModelConfig, hardware: HardwareConfig, workload: WorkloadConfig) -> str:
    return f"{model.name}__{hardware.name}__{workload.name}"


def to_config(cfg: DictConfig) -> Config:
    """Convert Hydra's composed config into the frozen :class:`Config`, fill derived values
    (study name, storage URL) and validate it."""
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, Config), type(obj)
    study = obj.study
    name = study.name or default_study_name(obj.model, obj.hardware, obj.workload)
    storage = study.storage or f"sqlite:///studies/{name}.db"
    obj = dataclasses.replace(obj, study=dataclasses.replace(study, name=name, storage=storage))
    if isinstance(obj.slo.p99_ms, int) and not isinstance(obj.slo.p99_ms, bool):
        obj = dataclasses.replace(obj, slo=dataclasses.replace(obj.slo, p99_ms=float(obj.slo.p99_ms)))
    if obj.slo.auto_factor is None:
        factor = AUTO_FACTOR_UNLOADED if obj.load.mode == "capacity" else AUTO_FACTOR_AT_LOAD
        obj = dataclasses.replace(obj, slo=dataclasses.replace(obj.slo, auto_factor=factor))
    validate(obj)
    return obj


def _fail(key: str, value: object, what: str) -> None:
    raise ConfigError(f"{key}={value!r}: {what}")


def validate(cfg: Config) -> None:
    """Range checks that the types alone cannot express, section by section. Raises ConfigError naming the key."""
    _validate_study(cfg.study)
    _validate_slo(cfg.slo, cfg.study)
    _validate_hardware(cfg.hardware)
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$", cfg.server.module):
        _fail("server.module", cfg.server.module, "a Python module name such as vllm.entrypoints.openai.api_server")
    if cfg.server.start_timeout_s <= 0:
        _fail("server.start_timeout_s", cfg.server.start_timeout_s, "must be > 0 s")
    validate_search(cfg.search)
    validate_workload(cfg.workload)
    validate_load(cfg.load)
    _validate_quality(cfg.quality)


def _validate_study(st: StudyConfig) -> None:
    if not _NAME_RE.match(st.name) or ".." in st.name:
        _fail("study.name", st.name, "use letters, digits, '.', '_' and '-' only (no path separators or '..')")
    if st.n_trials < 0:
        _fail("study.n_trials", st.n_trials, "must be >= 0")
    c = st.confirm
    if c.top_k < 0:
        _fail("study.confirm.top_k", c.top_k, "must be >= 0 (0 turns the confirmation stage off)")
    if c.repeats < 2:
        _fail("study.confirm.repeats", c.repeats, "must be >= 2: an interval needs two repeats per config "
              "(turn confirmation off with study.confirm.top_k=0)")
    if not 0 < c.confidence < 1:
        _fail("study.confirm.confidence", c.confidence, "must be in (0, 1), e.g. 0.95")
    if not 0 <= c.margin < 1:
        _fail("study.confirm.margin", c.margin, "must be in [0, 1), e.g. 0.05 (a simpler config may give up 5 %)")
    if c.seed_offset == 0:
        _fail("study.confirm.seed_offset", c.seed_offset, "0 would re-use the study's own prompts; use e.g. 1000")
    if st.workers < 0:
        _fail("study.workers", st.workers, "must be >= 1 (parallel trials on this host), or 0 for as many as the "
              "GPUs allow")
    if st.budget is not None and not st.budget > 0:
        _fail("study.budget", st.budget, "wall-clock minutes this command may spend, > 0 (null: no limit)")
    if st.patience is not None and st.patience < 1:
        _fail("study.patience", st.patience, "trials in a row without a gain, >= 1 (null: off)")
    if not 0 <= st.patience_min_gain < 1:
        _fail("study.patience_min_gain", st.patience_min_gain, "a fraction in [0, 1), e.g. 0.02 for 2 %")
    if "/" in st.host:
        _fail("study.host", st.host, "a host name without '/' (the worker records read <host>/w<index>)")
    if st.heartbeat_interval_s < 1:
        _fail("study.heartbeat_interval_s", st.heartbeat_interval_s, "must be >= 1 s")
    if st.heartbeat_grace_s <= st.heartbeat_interval_s:
        _fail("study.heartbeat_grace_s", st.heartbeat_grace_s,
              f"must be longer than study.heartbeat_interval_s={st.heartbeat_interval_s} (a few beats; default 180)")


def _validate_slo(slo: SloConfig, st: StudyConfig) -> None:
    if isinstance(slo.p99_ms, str):
        if slo.p99_ms != "auto":
            _fail("slo.p99_ms", slo.p99_ms, "a limit in ms (e.g. 1500), or auto (slo.auto_factor x the median "
                  "latency of vLLM's defaults on this host, measured once per study by the baseline trial)")
        if slo.auto_factor is not None and not slo.auto_factor > 1:
            _fail("slo.auto_factor", slo.auto_factor, "must be > 1: the limit is this multiple of the median")
        if not st.enqueue_baseline:
            _fail("slo.p99_ms", slo.p99_ms, "auto is calibrated by the baseline trial, and study.enqueue_baseline="
                  "false runs none: set study.enqueue_baseline=true or give slo.p99_ms a limit in ms")
    elif not slo.p99_ms > 0:
        _fail("slo.p99_ms", slo.p99_ms, "the latency limit must be > 0 ms")
    if not 0 <= slo.max_error_rate < 1:
        _fail("slo.max_error_rate", slo.max_error_rate, "must be in [0, 1)")


def _validate_hardware(hw: HardwareConfig) -> None:
    if len(set(hw.gpu_ids)) != len(hw.gpu_ids) or any(g < 0 for g in hw.gpu_ids):
        _fail("hardware.gpu_ids", hw.gpu_ids, "GPU indexes must be >= 0 and distinct, e.g. [0,1,2,3]")
    if hw.gpu_count < 1:
        _fail("hardware.gpu_count", hw.gpu_count, "must be >= 1")


def _validate_quality(q: QualityConfig) -> None:
    sets = sorted(p.stem for p in _QUALITY_DATA.glob("*.json"))
    if q.dataset not in sets:
        _fail("quality.dataset", q.dataset, f"no such quality set; available: {', '.join(sets)}")
    if not 0 < q.max_mean_kld < 10:
        _fail("quality.max_mean_kld", q.max_mean_kld, "nats per position, > 0, e.g. 0.005 (llama.cpp Q5_K_M level)")
    if not 0 < q.max_p99_kld < 100:
        _fail("quality.max_p99_kld", q.max_p99_kld, "nats, > 0, e.g. 0.1")
    if not 0 < q.min_same_top1 <= 1:
        _fail("quality.min_same_top1", q.min_same_top1, "a share of positions in (0, 1], e.g. 0.97")
    if not q.floor_multiple >= 0:
        _fail("quality.floor_multiple", q.floor_multiple, "must be >= 0 (0: the limits ignore the noise floor)")
    if not 0 < q.task_alpha < 1:
        _fail("quality.task_alpha", q.task_alpha, "a significance level in (0, 1), e.g. 0.05")
    for key in ("top_k", "spec_top_n"):
        if not 1 <= getattr(q, key) <= 20:
            _fail(f"quality.{key}", getattr(q, key), "must be in [1, 20] (vLLM's --max-logprobs, 20 by default)")
    for key in ("max_tokens", "task_max_tokens"):
        if getattr(q, key) < 1:
            _fail(f"quality.{key}", getattr(q, key), "must be >= 1")
    bad = [p for p in q.numerics_params if p not in NUMERICS_PARAM_CHOICES]
    if bad:
        _fail("quality.numerics_params", bad, f"valid choices: {', '.join(NUMERICS_PARAM_CHOICES)}")


