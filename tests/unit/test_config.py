import pytest

from optimizer.core.errors import ConfigError


def test_default_config_composes_to_the_embedded_cpu_study(compose):
    cfg = compose()
    assert cfg.hardware.device == "cpu" and cfg.model.name == "tiny"
    assert cfg.study.name == "tiny__cpu__chat-short"
    assert cfg.study.storage == "sqlite:///studies/tiny__cpu__chat-short.db"


@pytest.mark.parametrize("override,needle", [
    ("hardware=nonexistent", "hardware"),
    ("study.nope=1", "nope"),
    ("slo.p99_ms=abc", "p99_ms"),
    ("slo.p99_ms=0", "slo.p99_ms"),
    ("slo.p99_ms=-5", "slo.p99_ms"),
    ("search.gpu_memory_utilization.high=1.5", "gpu_memory_utilization"),
    ("search.max_num_seqs.low=300", "inverted"),
    ("search.enable_prefix_caching=[]", "empty"),
    ("load.concurrency=-1", "load.concurrency"),
    ("study.n_trials=-2", "study.n_trials"),
    ("study.budget=0", "study.budget=0"),
    ("study.budget=-5", "wall-clock minutes"),
    ("study.patience=0", "study.patience=0"),
    ("study.patience_min_gain=1.5", "study.patience_min_gain"),
    ("load.capacity.early_stop=maybe", "early_stop"),
    ("study.name=../evil", "study.name"),
    ("study.name=a/b", "study.name"),
    ("slo.metric=tpot", "slo.metric=tpot: Invalid value 'tpot', expected one of [ttft, itl, e2e]"),
    ("load.mode=open", "expected one of [concurrency, rate, capacity]"),
    ("workload.endpoint=chatty", "expected one of [completions, chat]"),
    ("load.arrival=gamma", "expected one of [poisson, constant]"),
    ("load.p99_sizing=maybe", "expected one of [warn, auto, off]"),
    ("hardware.device=tpu", "expected one of [cuda, cpu]"),
    ("search.sampler=cmaes", "expected one of [tpe, random]"),
    ("search.speculative=[eagle]", "expected one of [off, ngram, draft]"),
])
def test_bad_input_is_refused_with_the_key_named(compose, override, needle):
    with pytest.raises(ConfigError) as e:
        compose(override)
    assert needle in str(e.value)


def test_cli_exit_code_2_and_no_traceback(repo, tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "optimizer.run", "slo.p99_ms=0"], cwd=tmp_path, capture_output=True,
                       text=True, env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert r.returncode == 2
    assert "slo.p99_ms" in r.stderr and "Traceback" not in r.stderr


def test_an_auto_slo_is_accepted_with_the_capacity_search_and_still_checked():
    from optimizer.commands.cli import compose as _compose
    from optimizer.core.errors import ConfigError

    cfg = _compose(["load.mode=capacity", "slo.p99_ms=auto"])  # calibrated at one user (optimizer.trial.calibrate)
    assert cfg.slo.is_auto and cfg.load.mode == "capacity"
    assert _compose(["load.mode=capacity", "slo.p99_ms=2000"]).slo.p99_ms == 2000
    with pytest.raises(ConfigError, match="study.enqueue_baseline"):  # the baseline calibrates it, in either mode
        _compose(["load.mode=capacity", "slo.p99_ms=auto", "study.enqueue_baseline=false"])
    with pytest.raises(ConfigError, match="slo.auto_factor"):
        _compose(["load.mode=capacity", "slo.p99_ms=auto", "slo.auto_factor=0.9"])
