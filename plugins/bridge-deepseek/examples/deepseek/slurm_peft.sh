#!/usr/bin/env bash
#SBATCH --job-name=deepseek-peft
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=04:00:00
#SBATCH --output=%x-%j.out
# LoRA (or DoRA) fine-tuning of an HF model with a recipe of this plugin (RECIPE, default deepseek_v2_lite_peft) on megatron-core
# ('bridgectl train' under torchrun, one launcher per node). The base stays frozen: SAVE gets Megatron-LM
# torch_dist checkpoints of the adapters only, peft.json and metrics.jsonl; then 'bridgectl peft export'
# writes the HF PEFT adapter (adapter_config.json + adapter_model.safetensors) into "$SAVE-adapter", which
# peft's PeftModel.from_pretrained load on HF_MODEL. Merged HF weights instead:
# 'bridgectl peft merge --megatron-path "$SAVE" --hf-path DIR'.
#   HF_MODEL  the HF folder to start from (the frozen base)
#   DATA      the SFT data (JSONL: chat "messages", or "prompt"/"completion" pairs), tokenized first
#             with HF_MODEL's tokenizer into "$SAVE-data/sft" ('bridgectl data prepare --format sft')
#   SAVE      where checkpoints go ("$SAVE-adapter": the HF adapter); TP, PP: parallel sizes (default: the recipe's)
#   EXTRA     more key=value overrides, e.g. "peft.scheme=dora peft.rank=16 peft.alpha=32 train.iters=200"
#             (the recipe: LoRA rank 32, alpha 32 on linear_qkv,linear_proj,linear_fc1,linear_fc2)
#             peft 0.21 loads the dense layers' MLP adapters of this MoE model wrong (peft merge is right):
#             "peft.targets=linear_q_proj,linear_q_up_proj,linear_kv_up_proj,linear_proj" (attention only) for peft
# Usage: HF_MODEL=... DATA=... SAVE=... sbatch slurm_peft.sh   (bridgectl recipes: the others; bridgectl recipe show "$RECIPE": the settings)
set -euo pipefail
RECIPE="${RECIPE:-deepseek_v2_lite_peft}"
: "${HF_MODEL:?set HF_MODEL to an HF model folder}"
: "${DATA:?set DATA to an SFT JSONL file}"
: "${SAVE:?set SAVE to an output folder}"
bridgectl data prepare --tokenizer "$HF_MODEL" --input "$DATA" --output "$SAVE-data/sft" --format sft --overwrite
OVERRIDES=("data.sft_prefix=$SAVE-data/sft" "checkpoint.save=$SAVE")
if [[ -n "${TP:-}" ]]; then OVERRIDES+=("parallel.tp=$TP"); fi
if [[ -n "${PP:-}" ]]; then OVERRIDES+=("parallel.pp=$PP"); fi
GPUS="${SLURM_GPUS_ON_NODE:-8}"
HEAD="$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" | head -n 1)"

# shellcheck disable=SC2086  # EXTRA is a list of key=value overrides
srun torchrun --nnodes "${SLURM_NNODES:-1}" --nproc-per-node "$GPUS" \
    --rdzv-backend c10d --rdzv-endpoint "$HEAD:29500" \
    -m bridge_core.cli.main train --recipe "$RECIPE" --hf-model "$HF_MODEL" \
    "${OVERRIDES[@]}" ${EXTRA:-}
# the latest iteration's adapters as an HF PEFT folder (one process; gathers them from any TP/PP layout)
bridgectl peft export --megatron-path "$SAVE" --hf-path "$SAVE-adapter" --overwrite
