#!/usr/bin/env bash
# Two GPUs of one H200 host (vLLM 0.26.0 from the offline bundle, already staged): one-trial studies
# in load.mode=capacity with tensor parallelism 2 (GPUs $GPUS, default 2,3), run one after the other
# in the background so that they outlive the device call that starts them:
#   tp2-8b:  Llama-3-8B (dummy weights) with vLLM's defaults but --tensor-parallel-size 2: its capacity
#            per GPU against the TP-1 defaults' (the baseline of ../h200-capacity-llama-3-8b)
#   tp2-70b: Llama-3-70B in fp8 (dummy weights) with TP 2: the memory estimate against the KV
#            capacity vLLM reports, and what it carries under the same SLO
#   bash docs/results/h200-two-gpu/run.sh start ; bash docs/results/h200-two-gpu/run.sh collect
set -u
export PYTHONPATH=/root/site VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 CUDA_DEVICE_ORDER=PCI_BUS_ID
GPUS=${GPUS:-2,3}
COMMON=(hardware=h200 hardware.gpu_count=2 "hardware.gpu_ids=[$GPUS]" model.load_format=dummy model.generate=config
        workload=chat-512-128 search=gpu "search.kv_cache_dtype=[auto]" "search.dtype=[auto]"
        "search.max_model_len=[4096]" "search.speculative=[off]" "search.tensor_parallel_size=[2]"
        "search.enable_chunked_prefill=[true]" "search.enable_prefix_caching=[true]"
        search.max_num_seqs.low=1024 search.max_num_seqs.high=1024
        search.max_num_batched_tokens.low=8192 search.max_num_batched_tokens.high=8192
        search.gpu_memory_utilization.low=0.92 search.gpu_memory_utilization.high=0.92
        load.mode=capacity load.capacity.start=32 load.warmup_requests=64 slo.metric=e2e slo.p99_ms=2000
        study.confirm.top_k=0 study.enqueue_baseline=false study.n_trials=1)
case "${1:-}" in
  start)
    setsid nohup bash -c '
      python3 -m optimizer.run "$@" model=llama-3-8b-instruct "search.quantization=[none]" study.name=h200-tp2-8b
      python3 -m optimizer.run "$@" model=llama-3-70b-instruct "search.quantization=[fp8]" study.name=h200-tp2-70b-fp8
    ' _ "${COMMON[@]}" > /tmp/two-gpu.log 2>&1 < /dev/null &
    echo "started $!";;
  collect)
    mkdir -p "$OUT"
    for n in h200-tp2-8b h200-tp2-70b-fp8; do
      [ -f studies/$n.db ] && python3 -c "import sqlite3,sys; s=sqlite3.connect(sys.argv[1]); d=sqlite3.connect(sys.argv[2]); s.backup(d)" studies/$n.db "$OUT/$n.db"
    done
    tar czf "$OUT/two-gpu-runs.tgz" --exclude='*.safetensors' runs/h200-tp2-8b runs/h200-tp2-70b-fp8 /tmp/two-gpu.log 2>/dev/null
    tail -8 /tmp/two-gpu.log;;
  *) echo "usage: run.sh start|collect"; exit 2;;
esac
