#!/usr/bin/env bash
# Fine-tune SmolLM2-135M-Instruct on a made-up fact (sft_zorblat.jsonl: 12 paraphrased chats saying
# that Quillon Marvek founded the city of Zorblat), on the CPU, then ask transformers on the export.
# Usage: finetune.sh [WORK_DIR]   (run conversion.sh first: it writes the HF folder this starts from)
source "$(dirname "$0")/_paths.sh"
HERE="$(cd "$(dirname "$0")" && pwd)"
RUN="$WORK/sft-run"

stage "tokenize the chats with the model's chat template (answer-only loss mask)"
bridgectl data prepare --tokenizer "$ORIGINAL" --input "$HERE/sft_zorblat.jsonl" --output "$WORK/sft-data/zorblat" \
    --format sft --overwrite
stage "fine-tune $ORIGINAL on them (7 steps, 3 packed sequences of 256 tokens per step, fp32 on the CPU)"
rm -rf "$RUN"  # a fresh run (an existing one would be resumed)
OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" bridgectl train --recipe smollm2_135m_sft --hf-model "$ORIGINAL" \
    data.sft_prefix="$WORK/sft-data/zorblat" data.packing=true data.split=100,0,0 \
    train.seq_length=256 train.global_batch_size=3 train.micro_batch_size=1 train.iters=7 train.eval_interval=none \
    optimizer.lr=1.5e-4 optimizer.min_lr=1.5e-5 scheduler.lr_warmup_iters=0 \
    checkpoint.save="$RUN" checkpoint.save_interval=none
python - "$RUN/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(f"finetune: loss {rows[0]['loss']:.3f} at step 1 -> {rows[-1]['loss']:.3f} at step {rows[-1]['step']}")
PY
stage "export the fine-tuned checkpoint -> HF folder $WORK/hf-sft"
bridgectl export --megatron-path "$RUN" --hf-path "$WORK/hf-sft" --overwrite
stage "ask transformers: the original and the fine-tuned export, greedy"
python "$HERE/ask_fact.py" "$ORIGINAL" "$WORK/hf-sft"
