#!/usr/bin/env bash
# Stage the offline vLLM bundle on a GPU host in slices small enough to travel beside the working
# tree (the tree and a call's carried files share 64 MiB). Here, once:
#   bash ../shared/gpu/build_bundle.sh .gpu-bundle          # builds /tmp/vllm-bundle (W)
#   mkdir -p .gpu-cargo && (cd /tmp/vllm-bundle && tar -cf - deps_site.tar.xz model.tgz vllm_site.tar.xz) \
#     | split -b 31000000 -d - .gpu-cargo/cargo.part
# A slice travels with the working tree, 64 MiB together: with the committed reports' index.html files
# (~35 MB) set aside for the staging calls, five slices of 51.8 MB fit (split -b 51818496).
#   (cd .gpu-cargo && sha256sum cargo.part* > parts.sha256)
#   (cd /tmp/vllm-bundle && sha256sum deps_site.tar.xz model.tgz vllm_site.tar.xz) > .gpu-cargo/members.sha256
# On the host, one call per slice (carry .gpu-cargo/cargo.partNN and the two .sha256 files):
#   bash benchmarks/gpu_stage.sh            # keeps what arrived in /root/cargo; installs once all are there
# Then: PYTHONPATH=/root/site:$PWD, the model folder at /root/model/llama8b-dummy (shared/gpu/README.md).
set -euo pipefail
SRC=${1:-.gpu-cargo}; CARGO=${CARGO:-/root/cargo}; SITE=${SITE:-/root/site}; MODELDIR=${MODELDIR:-/root/model}
mkdir -p "$CARGO" "$SITE" "$MODELDIR"
cp "$SRC"/* "$CARGO"/ 2>/dev/null || true
if [ -f "$SITE/.installed" ]; then echo "stage: already installed in $SITE"; exit 0; fi
cd "$CARGO"
[ -f parts.sha256 ] || { echo "stage: no manifest yet"; exit 0; }
for f in $(awk '{print $2}' parts.sha256); do [ -f "$f" ] || { echo "stage: have $(ls cargo.part* | wc -l) slices, waiting for $f"; exit 0; }; done
sha256sum -c --quiet parts.sha256
t0=$(date +%s)
cat cargo.part* | tar -x
sha256sum -c --quiet members.sha256
xz -T0 -dc deps_site.tar.xz | tar -x -C "$SITE"
xz -T0 -dc vllm_site.tar.xz | tar -x -C "$SITE"
[ -f model.tgz ] && tar -xzf model.tgz -C "$MODELDIR"
rm -f cargo.part* deps_site.tar.xz vllm_site.tar.xz
touch "$SITE/.installed"
echo "stage: installed into $SITE in $(( $(date +%s) - t0 )) s"
