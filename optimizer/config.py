"""The one typed configuration, built at the entry point and passed down in slices.

Hydra composes YAML from ``conf/`` against these dataclass schemas (registered in the
ConfigStore by :func:`register_configs`), so a misspelled key or a wrong type fails at compose
time. :func:`to_config` turns the composed ``DictConfig`` into these dataclasses and checks
ranges (:func:`validate`); after that no code sees a ``DictConfig`` or the environment.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from omegaconf import MISSING, DictConfig, OmegaConf

from optimizer.choices import Arrival, CapacityControl, CapacityValue, Device, Endpoint, Launcher, LoadMode, P99Sizing, QualityMode, Sampler, SloMetric, SpecMethod
from optimizer.errors import ConfigError

__all__ = [
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
class IntRange:
    low: int = 1
    high: int = 1
    log: bool = True
    step: int = 1  # > 1: only low, low + step, ... (no log scale); fewer distinct values, e.g.
    # fewer torch.compile cache keys: vLLM compiles anew for each max_num_batched_tokens
    # "pow2": only low, the powers of two between, high (and vLLM's default where it lies in the
    # range), drawn as choices: the values repeat, so the compile cache answers most starts
    # (optimizer/space/grid.py); "": every integer (or every step)
    grid: str = ""


@dataclass
class FloatRange:
    low: float = 0.5
    high: float = 0.5
    step: Optional[float] = None


@dataclass
class HardwareConfig:
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
class ModelConfig:
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


@dataclass
class WorkloadConfig:
    """The fixed, seeded request set of every trial."""

    name: str = MISSING
    endpoint: Endpoint = Endpoint.completions
    prompt_tokens: int = 256
    prompt_tokens_spread: float = 0.0  # uniform +-fraction around prompt_tokens
    output_tokens: int = 64
    output_tokens_spread: float = 0.0
    shared_prefix_tokens: int = 0  # tokens every prompt starts with (prefix caching)
    num_prefixes: int = 1
    dataset: str = ""  # JSONL file: {"prompt": ..., "max_tokens": ...} per line, or ShareGPT JSON
    seed: int = 0
    # tokenizer.json (or a folder holding one) for exact-length chat prompts and ShareGPT reply
    # lengths; empty: model.path's, if it has one; none: chat prompt lengths are approximate
    tokenizer: str = ""
    # sampling, sent in every request body exactly as given (and passed to `vllm bench serve` by the
    # fidelity benchmark): greedy by default, the one deterministic choice (docs/load-generator.md)
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = -1  # -1: no top-k (vLLM's neutral value; not sent)
    sampling_seed: Optional[int] = None  # per-request sampling seed; None: not sent
    ignore_eos: bool = True  # exact output lengths: generate max_tokens whatever the model says


@dataclass
class CapacityConfig:
    """``load.mode=capacity``: the highest load that meets the SLO (optimizer/capacity/).

    Probes double from ``start`` until one breaks the SLO or the error limit (or reaches ``max``),
    then bisect between the last pass and the first failure until they are ``resolution`` apart
    (concurrency: max(1, resolution x the passing load) users; rate: resolution x the passing rate)."""

    control: CapacityControl = CapacityControl.concurrency  # closed loop (users) | rate (open loop, requests/s)
    start: float = 1.0  # the first (lowest) probed load; failing there: infeasible
    max: float = 0.0  # highest load probed; 0: max_num_seqs x max_factor (study), load.max_inflight (loadtest)
    max_factor: float = 2.0  # the derived cap, in units of the server's max_num_seqs
    resolution: float = 0.05  # bisection stops when pass and failure are this close (relative)
    max_probes: int = 16  # probe runs per search (a lengthened probe counts twice)
    max_s: float = 0.0  # no new probe once the search has run this long; 0: no limit
    min_windows: int = 4  # measured requests per probe >= this x the concurrency
    lengthen: float = 2.0  # a probe whose P99 interval straddles the limit: this many times its requests
    value: CapacityValue = CapacityValue.output_tok_s  # the trial's value at the capacity
    # stop a trial's search once its upper confidence bound on its value is below the incumbent's lower
    # bound (optimizer/capacity/search.py, rule 6); its value is then what it carried so far, a lower bound
    early_stop: bool = True
    # after the bisection: probe on, one load at a time where the pass/fail verdict is least certain, until
    # the fitted capacity's interval is at most this share of the capacity wide (or max_probes / max_s);
    # 0: off (the bisection's bracket ends the search)
    precision: float = 0.0


@dataclass
class LoadConfig:
    """How the request set is sent."""

    mode: LoadMode = LoadMode.concurrency  # capacity: search the highest load that meets the SLO (load.capacity)
    concurrency: int = 8
    request_rate: float = 4.0  # requests/s, open loop
    arrival: Arrival = Arrival.poisson
    num_requests: int = 64
    duration_s: float = 0.0  # >0: stop issuing after this many seconds instead of a count
    warmup_requests: int = 8
    request_timeout_s: float = 120.0
    stall_timeout_s: float = 60.0  # no byte for this long in a stream: the request fails
    max_inflight: int = 512  # open loop: cap on concurrently open requests
    p99_confidence: float = 0.95
    # too few requests to bound the P99 from above at p99_confidence: warn (and report the CI),
    # auto (raise num_requests to the minimum), or off
    p99_sizing: P99Sizing = P99Sizing.warn
    # stop issuing after this many consecutive connect/stall failures (the server is gone or hung);
    # unsent requests are recorded as `aborted`. 0: max(8, 2 x concurrency)
    abort_after_failures: int = 0
    # load-generator processes, each with its own event loop and connections, sharing one seeded
    # schedule; 0: sized from the load and this host's cores (optimizer/loadgen/pool.py)
    client_workers: int = 0
    # warn when the busiest client process uses more than this share of one core during the run
    client_cpu_warn: float = 0.8
    # warn when a client process waited for a CPU (run queue) more than this share of the run: it
    # read the streams late (optimizer/loadgen/schedwait.py)
    client_wait_warn: float = 0.1
    capacity: CapacityConfig = field(default_factory=CapacityConfig)


@dataclass
class SearchConfig:
    """The search space. Empty choice lists and degenerate ranges fix a parameter."""

    version: int = 1
    sampler: Sampler = Sampler.tpe
    n_startup_trials: int = 4
    max_num_seqs: IntRange = field(default_factory=lambda: IntRange(8, 256, True))
    max_num_batched_tokens: IntRange = field(default_factory=lambda: IntRange(512, 8192, True))
    gpu_memory_utilization: FloatRange = field(default_factory=lambda: FloatRange(0.80, 0.95, 0.01))
    kv_cache_gib: FloatRange = field(default_factory=lambda: FloatRange(1.0, 4.0, 0.5))  # CPU only
    enable_chunked_prefill: list[bool] = field(default_factory=lambda: [True, False])
    enable_prefix_caching: list[bool] = field(default_factory=lambda: [True, False])
    quantization: list[str] = field(default_factory=lambda: ["none"])
    dtype: list[str] = field(default_factory=lambda: ["auto"])
    kv_cache_dtype: list[str] = field(default_factory=lambda: ["auto"])
    max_model_len: list[int] = field(default_factory=list)  # empty: the model's max_model_len
    speculative: list[SpecMethod] = field(default_factory=lambda: [SpecMethod.off])
    num_speculative_tokens: IntRange = field(default_factory=lambda: IntRange(1, 6, False))
    ngram_lookup_max: IntRange = field(default_factory=lambda: IntRange(2, 6, False))
    draft_model: str = ""
    tensor_parallel_size: list[int] = field(default_factory=lambda: [1])
    # memory the estimate must leave free for activations, as a fraction of the memory share
    activation_reserve: float = 0.08


@dataclass
class SloConfig:
    metric: SloMetric = SloMetric.e2e
    # the P99 limit in ms, or "auto": slo.auto_factor x the P99 of vLLM's defaults (the baseline
    # trial) at the study's load on this host (load.mode=capacity: x its median at one user,
    # unloaded), measured once per study (optimizer.study.calibrate)
    p99_ms: Union[int, float, str] = 5000.0
    auto_factor: float = 1.5  # slo.p99_ms=auto only
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
                               "(optimizer.study.calibrate.resolved)")
        return float(self.p99_ms)


@dataclass
class ConfirmConfig:
    """The confirmation stage (:mod:`optimizer.study.confirm`): the baseline and the ``top_k`` best
    feasible distinct configs, each started on a fresh server ``repeats`` times in interleaved
    rounds, measured on held-out prompts (workload seed + ``seed_offset`` + round)."""

    top_k: int = 3  # 0: no confirmation
    repeats: int = 3  # rounds; an interval needs at least 2
    confidence: float = 0.95  # of the uplift's interval (block design on the log scale, simultaneous over the configs)
    # a simpler config (fewer flags changed) that beats the defaults replaces the best only when shown to lose at
    # most this share of its throughput (non-inferiority); 5 % = load.capacity.resolution's default: see
    # optimizer/study/uplift.py
    margin: float = 0.05
    seed_offset: int = 1000  # held-out prompts: the study's prompts use workload.seed itself


@dataclass
class StudyConfig:
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
class ServerConfig:
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
NUMERICS_PARAM_CHOICES = ("quantization", "dtype", "kv_cache_dtype", "speculative", "num_speculative_tokens",
                          "ngram_lookup_max", "ngram_lookup_min", "draft_model")


_QUALITY_DATA = Path(__file__).resolve().parent / "quality" / "data"  # the shipped quality sets (optimizer.quality)


@dataclass
class QualityConfig:
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
    dataset: str = "quality-v2"  # optimizer/quality/data/<dataset>.json
    # a trial whose value of any of these differs from the baseline's is probed (and gated)
    numerics_params: list[str] = field(default_factory=lambda: list(NUMERICS_PARAM_CHOICES))


@dataclass
class Config:
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
    validate(obj)
    return obj


def _fail(key: str, value: object, what: str) -> None:
    raise ConfigError(f"{key}={value!r}: {what}")


def validate(cfg: Config) -> None:
    """Range checks that the types alone cannot express. Raises ConfigError naming the key."""
    s, w, ld, slo, st, hw = cfg.search, cfg.workload, cfg.load, cfg.slo, cfg.study, cfg.hardware
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
    if len(set(hw.gpu_ids)) != len(hw.gpu_ids) or any(g < 0 for g in hw.gpu_ids):
        _fail("hardware.gpu_ids", hw.gpu_ids, "GPU indexes must be >= 0 and distinct, e.g. [0,1,2,3]")
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$", cfg.server.module):
        _fail("server.module", cfg.server.module, "a Python module name such as vllm.entrypoints.openai.api_server")
    if isinstance(slo.p99_ms, str):
        if slo.p99_ms != "auto":
            _fail("slo.p99_ms", slo.p99_ms, "a limit in ms (e.g. 1500), or auto (slo.auto_factor x the P99 of "
                  "vLLM's defaults on this host, measured once per study by the baseline trial)")
        if not slo.auto_factor > 1:
            _fail("slo.auto_factor", slo.auto_factor, "must be > 1: the limit is this multiple of the baseline's P99")
        if not st.enqueue_baseline:
            _fail("slo.p99_ms", slo.p99_ms, "auto is calibrated by the baseline trial, and study.enqueue_baseline="
                  "false runs none: set study.enqueue_baseline=true or give slo.p99_ms a limit in ms")
    elif not slo.p99_ms > 0:
        _fail("slo.p99_ms", slo.p99_ms, "the latency limit must be > 0 ms")
    if not 0 <= slo.max_error_rate < 1:
        _fail("slo.max_error_rate", slo.max_error_rate, "must be in [0, 1)")
    if hw.gpu_count < 1:
        _fail("hardware.gpu_count", hw.gpu_count, "must be >= 1")
    for key, r in (("max_num_seqs", s.max_num_seqs), ("max_num_batched_tokens", s.max_num_batched_tokens),
                   ("num_speculative_tokens", s.num_speculative_tokens), ("ngram_lookup_max", s.ngram_lookup_max)):
        if r.low < 1:
            _fail(f"search.{key}.low", r.low, "must be >= 1")
        if r.low > r.high:
            _fail(f"search.{key}", f"[{r.low}, {r.high}]", "inverted range: low must be <= high")
        if r.step < 1 or (r.step > 1 and r.log):
            _fail(f"search.{key}.step", r.step, "must be >= 1, and 1 with log: true (Optuna cannot combine them)")
        if r.grid not in ("", "pow2"):
            _fail(f"search.{key}.grid", r.grid, "must be pow2 (powers of two between low and high) or empty")
        if r.grid and r.step > 1:
            _fail(f"search.{key}.grid", r.grid, f"a grid replaces step={r.step}: set one of them")
    g = s.gpu_memory_utilization
    if not (0 < g.low <= 1 and 0 < g.high <= 1):
        _fail("search.gpu_memory_utilization", f"[{g.low}, {g.high}]", "the memory share must be in (0, 1]")
    if g.low > g.high:
        _fail("search.gpu_memory_utilization", f"[{g.low}, {g.high}]", "inverted range: low must be <= high")
    k = s.kv_cache_gib
    if k.low <= 0 or k.low > k.high:
        _fail("search.kv_cache_gib", f"[{k.low}, {k.high}]", "must be > 0 with low <= high")
    for key in ("enable_chunked_prefill", "enable_prefix_caching", "quantization", "dtype", "kv_cache_dtype",
                "speculative", "tensor_parallel_size"):
        if not getattr(s, key):
            _fail(f"search.{key}", [], "the choice list is empty: give at least one choice")
    if "draft" in s.speculative and not s.draft_model:
        _fail("search.draft_model", "", "speculative 'draft' needs search.draft_model (a local directory)")
    if w.prompt_tokens < 1 or w.output_tokens < 1:
        _fail("workload.prompt_tokens/output_tokens", (w.prompt_tokens, w.output_tokens), "must be >= 1")
    if not 0 <= w.prompt_tokens_spread < 1 or not 0 <= w.output_tokens_spread < 1:
        _fail("workload.*_spread", (w.prompt_tokens_spread, w.output_tokens_spread), "must be in [0, 1)")
    _validate_capacity(ld.capacity)
    if ld.concurrency < 1:
        _fail("load.concurrency", ld.concurrency, "must be >= 1")
    if not ld.request_rate > 0:
        _fail("load.request_rate", ld.request_rate, "must be > 0 requests/s")
    if ld.num_requests < 1 and ld.duration_s <= 0:
        _fail("load.num_requests", ld.num_requests, "must be >= 1 (or set load.duration_s)")
    if ld.warmup_requests < 0:
        _fail("load.warmup_requests", ld.warmup_requests, "must be >= 0")
    if ld.request_timeout_s <= 0 or ld.stall_timeout_s <= 0:
        _fail("load.request_timeout_s", ld.request_timeout_s, "timeouts must be > 0 s")
    if not 0 < ld.p99_confidence < 1:
        _fail("load.p99_confidence", ld.p99_confidence, "must be in (0, 1)")
    if ld.abort_after_failures < 0:
        _fail("load.abort_after_failures", ld.abort_after_failures, "must be >= 0 (0: automatic)")
    if ld.max_inflight < 1:
        _fail("load.max_inflight", ld.max_inflight, "must be >= 1")
    if ld.client_workers < 0:
        _fail("load.client_workers", ld.client_workers, "must be >= 1 (client processes), or 0 for automatic")
    if not ld.client_cpu_warn > 0:
        _fail("load.client_cpu_warn", ld.client_cpu_warn, "a share of one core, > 0 (default 0.8)")
    if not ld.client_wait_warn > 0:
        _fail("load.client_wait_warn", ld.client_wait_warn, "a share of the run's wall time, > 0 (default 0.1)")
    if not w.temperature >= 0:
        _fail("workload.temperature", w.temperature, "must be >= 0 (0: greedy)")
    if not 0 < w.top_p <= 1:
        _fail("workload.top_p", w.top_p, "must be in (0, 1] (1: no nucleus cut)")
    if w.top_k == 0 or w.top_k < -1:
        _fail("workload.top_k", w.top_k, "must be >= 1, or -1 for no top-k")
    if cfg.server.start_timeout_s <= 0:
        _fail("server.start_timeout_s", cfg.server.start_timeout_s, "must be > 0 s")
    _validate_quality(cfg.quality)


def _validate_capacity(c: CapacityConfig) -> None:
    if not c.start > 0 or (c.control == "concurrency" and c.start != int(c.start)):
        _fail("load.capacity.start", c.start, "must be > 0 (a whole number of users with control=concurrency)")
    if c.max < 0 or (c.max and c.max < c.start):
        _fail("load.capacity.max", c.max, f"must be >= load.capacity.start={c.start:g}, or 0 (derived)")
    if not c.max_factor > 0:
        _fail("load.capacity.max_factor", c.max_factor, "must be > 0")
    if not 0 < c.resolution < 1:
        _fail("load.capacity.resolution", c.resolution, "must be in (0, 1), e.g. 0.05 for 5 %")
    if c.precision < 0:
        _fail("load.capacity.precision", c.precision, "must be >= 0 (0: off), e.g. 0.2 for an interval 20 % wide")
    if c.max_probes < 1:
        _fail("load.capacity.max_probes", c.max_probes, "must be >= 1")
    if c.max_s < 0:
        _fail("load.capacity.max_s", c.max_s, "must be >= 0 s (0: no limit)")
    if c.min_windows < 1:
        _fail("load.capacity.min_windows", c.min_windows, "must be >= 1")
    if not c.lengthen >= 1:
        _fail("load.capacity.lengthen", c.lengthen, "must be >= 1 (1: never lengthen)")


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


