#!/usr/bin/env bash
# One device call on the H100 host (vLLM 0.26.0 from the offline bundle already staged):
# resume the study for at most LIMIT seconds (then SIGTERM: the trial in flight is recorded as
# interrupted and retried by the next call), write the report, and hand results back through $OUT.
#   LIMIT=530 bash docs/results/h100-llama-3-8b/run.sh
set -u
LIMIT=${LIMIT:-530}
export PYTHONPATH=/root/site VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
ARGS=(hardware=h100 model=llama-3-8b-instruct model.load_format=dummy model.generate=config
      workload=chat-512-128 search=gpu "search.quantization=[none,fp8]" "search.kv_cache_dtype=[auto,fp8]"
      "search.dtype=[auto]" "search.max_model_len=[4096]" "search.speculative=[off]"
      "search.tensor_parallel_size=[1]" search.max_num_seqs.low=32 search.max_num_batched_tokens.low=2048
      search.max_num_batched_tokens.step=1 search.max_num_batched_tokens.log=true
      search.n_startup_trials=6 load.concurrency=64 load.num_requests=512 load.warmup_requests=64
      slo.metric=e2e slo.p99_ms=2000 study.name=h100-llama-3-8b study.n_trials=${N_TRIALS:-14})
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>&1
timeout -s TERM "$LIMIT" python3 -m optimizer.run "${ARGS[@]}"
echo "optimizer exit code: $?"
cp studies/h100-llama-3-8b.db "$OUT/" 2>/dev/null
cp reports/h100-llama-3-8b/index.html reports/h100-llama-3-8b/best.yaml reports/h100-llama-3-8b/trials.csv "$OUT/" 2>/dev/null
tar czf "$OUT/runs.tgz" --exclude='*.safetensors' runs/h100-llama-3-8b 2>/dev/null
ls -la "$OUT"
