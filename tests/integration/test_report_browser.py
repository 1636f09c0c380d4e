"""The report end to end: a SQLite study on disk, ``python -m optimizer.report``, headless Chromium.

The page is loaded from ``file://`` with every host name mapped to NOTFOUND, and checked for:
every Plotly figure rendered (an SVG ``main-svg`` inside each figure div after load), no console
message (uncaught errors included), no network request made by the page (Chromium's NetLog),
no external ``src``/``href`` in the HTML. The screenshot goes to ``tmp_path`` and, when
``REPORT_ARTIFACT_DIR`` is set, is copied there. Skipped where Chromium is not installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import NamedTuple, Optional

import optuna
import pytest
import yaml

from tests.support.report_fixtures import make_study, make_trial, study_config, synthetic_trials

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
# if any of this ran, <html> would carry data-pwned="..." in the dumped DOM
EVIL = ('<script>document.documentElement.setAttribute("data-pwned","1")</script>'
        '<img src=x onerror="document.documentElement.setAttribute(\'data-pwned\',\'2\')">')

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def chromium() -> str:
    if CHROMIUM is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install -y chromium; `make test` does it)")
    return CHROMIUM


class PageLoad(NamedTuple):
    dom: str
    console: list[str]  # console messages the page logged (errors included)
    fetched: list[str]  # http(s) URLs the page asked for


def _browse(chromium: str, page: Path, work: Path, *mode: str, height: int = 2000) -> PageLoad:
    netlog = work / f"netlog-{os.getpid()}-{len(list(work.iterdir()))}.json"
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--hide-scrollbars",
             "--host-resolver-rules=MAP * ~NOTFOUND", f"--log-net-log={netlog}", "--virtual-time-budget=10000",
             f"--window-size=1400,{height}", *mode, page.resolve().as_uri()],
            capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]
    return PageLoad(proc.stdout, console, _page_requests(netlog))


def _page_requests(netlog: Path) -> list[str]:
    """URLs requested on behalf of the page (not Chromium's own background requests)."""
    log = json.loads(netlog.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return sorted({e["params"]["url"] for e in log["events"]
                   if e["type"] == start_job and (e.get("params") or {}).get("url", "").startswith(("http:", "https:"))
                   and e["params"].get("initiator") != "not an origin"})


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, Optional[str]]]) -> None:
        self.urls += [v or "" for k, v in attrs if k in ("src", "href", "action", "poster", "data")]


def _rendered(dom: str) -> dict[str, bool]:
    """Figure div id -> whether Plotly drew into it (its part of the DOM holds a main-svg)."""
    starts = [(m.start(), m.group(1)) for m in re.finditer(r'<div id="(fig-[a-z_]+)" class="[^"]*plotly-graph-div', dom)]
    ends = [s for s, _ in starts[1:]] + [len(dom)]
    return {fid: 'class="main-svg"' in dom[s:e] and "plot-container" in dom[s:e] for (s, fid), e in zip(starts, ends)}


def _write_db(tmp_path: Path, name: str, trials: list, model_path: str = "") -> str:
    storage = f"sqlite:///{tmp_path / (name + '.db')}"
    cfg = study_config(name)
    if model_path:  # the model as the user named it (best.yaml names it so)
        cfg = dict(cfg, model=dict(cfg["model"], path=model_path))
    make_study(trials, name=name, storage=storage, config=cfg)
    return storage


def _report(tmp_path: Path, name: str, storage: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "optimizer.report", f"study.name={name}", f"study.storage={storage}",
                           f"reports_dir={tmp_path / 'reports'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def _mixed() -> list:
    trials = synthetic_trials(n=14)
    evil = make_trial(14, trials[1].params, outcome="startup", extra={"failure_detail": EVIL, "failure": EVIL})
    return trials + [evil]


def _capacity() -> list:  # load.mode=capacity: the mixed study plus three searched trials (curves, bars)
    from tests.unit.test_report_capacity import trial

    trials = synthetic_trials(n=14)
    return trials + [trial(14, 6), trial(15, 11), trial(16, float("nan"))]


STUDIES = {"mixed": (_mixed, 9), "no-feasible": (lambda: synthetic_trials(feasible=False), 9),
           "one-trial": (lambda: synthetic_trials(n=1), 6), "empty": (lambda: [], 0), "capacity": (_capacity, 11)}


@pytest.mark.parametrize("kind", list(STUDIES))
def test_report_renders_offline_in_a_browser(chromium, tmp_path, kind):
    make, n_figs = STUDIES[kind]
    name = f"browser-{kind}"
    proc = _report(tmp_path, name, _write_db(tmp_path, name, make()))
    assert proc.returncode == 0, proc.stderr
    page = tmp_path / "reports" / name / "index.html"
    assert proc.stdout.strip() == str(page.resolve())
    source = page.read_text()

    links = _Links()
    links.feed(source)
    assert not [u for u in links.urls if re.match(r"^(https?:)?//", u)], "the page links outside itself"
    assert source.count("Plotly.newPlot") == n_figs and source.count("plotly.js v") == (1 if n_figs else 0)

    load = _browse(chromium, page, tmp_path, "--dump-dom")
    assert load.console == [], "the page logged to the console:\n" + "\n".join(load.console)
    assert load.fetched == [], f"the page fetched {load.fetched}"
    rendered = _rendered(load.dom)
    assert len(rendered) == n_figs and all(rendered.values()), rendered
    assert 'data-pwned="' not in load.dom and '<img src="x"' not in load.dom
    if kind == "mixed":
        assert "&lt;script&gt;document.documentElement" in load.dom  # shown as text, not run
    if kind == "empty":
        assert "has no trials yet" in load.dom
    if kind == "no-feasible":
        assert "No trial met the SLO" in load.dom and not (page.parent / "best.yaml").exists()
    if kind == "one-trial":
        assert "Only one trial so far" in load.dom
    if kind == "mixed":  # the levers in words, and importances over every measured trial (issue 16)
        assert "What drove the result (" in load.dom and "median" in load.dom and "output tok/s against" in load.dom
        assert "every measured trial" in load.dom


def test_screenshot_of_the_report(chromium, tmp_path):
    name = "browser-shot"
    assert _report(tmp_path, name, _write_db(tmp_path, name, _mixed())).returncode == 0
    page = tmp_path / "reports" / name / "index.html"
    shot = tmp_path / "report.png"
    load = _browse(chromium, page, tmp_path, f"--screenshot={shot}", height=9000)
    assert load.console == [] and load.fetched == []
    assert shot.stat().st_size > 100_000
    if os.environ.get("REPORT_ARTIFACT_DIR"):
        dest = Path(os.environ["REPORT_ARTIFACT_DIR"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, dest / "report.png")
    try:
        from PIL import Image
    except ImportError:
        return
    im = Image.open(shot).convert("RGB")
    top = im.crop((0, 1400, 1400, 2000))  # the throughput/P99 scatter
    assert len(top.getcolors(maxcolors=1_000_000) or []) > 50, "the scatter looks blank"


def test_the_time_chart_splits_each_start_and_states_the_compile_cache_hit_rate(chromium, tmp_path):
    """The drawn chart (not only its data) has the start's phases and the study's hit rate."""
    from tests.unit.test_report_data import _cached_study

    name = "browser-compile"
    assert _report(tmp_path, name, _write_db(tmp_path, name, _cached_study())).returncode == 0
    load = _browse(chromium, tmp_path / "reports" / name / "index.html", tmp_path, "--dump-dom")
    assert load.console == [] and _rendered(load.dom)["fig-phases"]
    chart = load.dom[load.dom.index('<div id="fig-phases"'):]
    legend = re.findall(r'class="legendtext"[^>]*>([^<]+)<', chart)
    assert {"start: process start + imports", "start: model load", "start: torch.compile", "start: CUDA graphs",
            "start: engine init rest", "server start", "load test"} <= set(legend), legend
    assert "2 of 4 server starts loaded the compiled model (50% hit rate)" in re.sub(r"<[^>]+>", "", chart)


def test_the_harness_catches_errors_and_fetches(chromium, tmp_path):
    """The checks above would pass vacuously on a browser that logs nothing: prove they see faults."""
    bad = tmp_path / "bad.html"
    bad.write_text('<html><head><script src="https://cdn.example.com/x.js"></script></head><body>'
                   '<div id="fig-x" class="plotly-graph-div"></div><script>undefinedFn();</script></body></html>')
    load = _browse(chromium, bad, tmp_path, "--dump-dom")
    assert any("Uncaught ReferenceError" in ln for ln in load.console)
    assert load.fetched == ["https://cdn.example.com/x.js"]
    assert _rendered(load.dom) == {"fig-x": False}


def test_report_cli_help_and_missing_study(tmp_path):
    help_ = subprocess.run([sys.executable, "-m", "optimizer.report", "--help"], cwd=REPO, capture_output=True,
                           text=True, timeout=120)
    assert help_.returncode == 0 and "study.name" in help_.stdout
    storage = f"sqlite:///{tmp_path / 'none.db'}"
    proc = _report(tmp_path, "nope", storage)
    assert proc.returncode == 1 and "no study database" in proc.stderr and not (tmp_path / "none.db").exists()
    other = _write_db(tmp_path, "other", [])
    proc = _report(tmp_path, "nope", other)
    assert proc.returncode == 1 and "no study named 'nope'" in proc.stderr and "other" in proc.stderr


@pytest.mark.slow
def test_best_yaml_is_read_by_vllms_own_parser(tmp_path):
    """`vllm serve --config best.yaml` and the api_server module both get the best trial's flags."""
    pytest.importorskip("vllm")
    serve = {"model": "/models/tiny", "served_model_name": "tiny", "max_num_seqs": 64, "max_num_batched_tokens": 3001,
             "kv_cache_memory_bytes": 2147483648, "enable_chunked_prefill": True, "enable_prefix_caching": False,
             "speculative_config": {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4}}
    t = make_trial(0, {"max_num_seqs": 64}, throughput=2000, e2e_center=500, extra={"serve_config": json.dumps(serve)})
    name = "yaml"
    assert _report(tmp_path, name, _write_db(tmp_path, name, [t], model_path="/models/tiny")).returncode == 0
    best = tmp_path / "reports" / name / "best.yaml"
    assert yaml.safe_load(best.read_text())["model"] == "/models/tiny"
    script = f"""
import json, sys
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.entrypoints.cli.serve import ServeSubcommand
try:  # vLLM 0.32; older releases keep it in vllm.entrypoints.openai.cli_args
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
except ImportError:
    from vllm.entrypoints.openai.cli_args import make_arg_parser
keys = {sorted(serve)!r}
top = FlexibleArgumentParser(); ServeSubcommand().subparser_init(top.add_subparsers(dest="subparser"))
a = top.parse_args(["serve", "--config", {str(best)!r}])
b = make_arg_parser(FlexibleArgumentParser()).parse_args(["--config", {str(best)!r}])
print("RESULT" + json.dumps([{{k: getattr(ns, k) for k in keys}} for ns in (a, b)], default=str))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parsed = json.loads(proc.stdout.split("RESULT", 1)[1])
    for ns in parsed:
        assert ns == serve | {"served_model_name": ["tiny"]}  # nargs="+"
