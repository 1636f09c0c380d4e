#!/usr/bin/env bash
# benchmarks/start_time.py on one GPU of a host with the vLLM bundle staged (../shared/gpu/README.md),
# detached (it outlives the device call that starts it; a later call collects /tmp/start_time-gpu.*):
#   GPU=1 bash benchmarks/gpu_start_time.sh start ; bash benchmarks/gpu_start_time.sh collect
set -u
export PYTHONPATH=/root/site VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 CUDA_DEVICE_ORDER=PCI_BUS_ID
GPU=${GPU:-0}
case "${1:-}" in
  start)
    export CUDA_VISIBLE_DEVICES=$GPU
    setsid nohup python3 benchmarks/start_time.py --python python3 --rounds "${ROUNDS:-3}" \
      --out /tmp/start_time-gpu.json \
      --base "hardware=${HW:-h200} model=llama-3-8b-instruct model.load_format=dummy model.generate=config search=gpu search.max_model_len=[4096] hardware.gpu_ids=[$GPU]" \
      --config "defaults=" --variant "shared=" --variant "cold=server.cache_dir={fresh}" ${EXTRA:-} \
      > /tmp/start_time-gpu.log 2>&1 < /dev/null &
    echo "started $!";;
  collect)
    mkdir -p "$OUT"; cp /tmp/start_time-gpu.json /tmp/start_time-gpu.log "$OUT/" 2>/dev/null; tail -20 /tmp/start_time-gpu.log;;
  *) echo "usage: gpu_start_time.sh start|collect"; exit 2;;
esac
