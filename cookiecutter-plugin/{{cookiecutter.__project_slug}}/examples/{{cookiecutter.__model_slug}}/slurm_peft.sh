#!/usr/bin/env bash
#SBATCH --job-name={{ cookiecutter.__model_slug }}-peft
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=02:00:00
#SBATCH --output=%x-%j.out
# LoRA fine-tuning of a converted checkpoint with this plugin's peft recipe. Megatron-LM's own
# pretrain_gpt.py has no LoRA: PEFT_TRAINER names a training script that does (for example one built
# on Megatron-Bridge or NeMo) and that accepts Megatron-LM's flags plus the recipe's lora-* flags.
#   PEFT_TRAINER  the LoRA-capable training script
#   CKPT          the converted checkpoint (conversion.sh's WORK_DIR/megatron)
#   DATA          the training data (in the trainer's format)
#   SAVE          where adapter checkpoints go; TP, PP: parallel sizes (default 1)
# Usage: PEFT_TRAINER=... CKPT=... DATA=... SAVE=... sbatch slurm_peft.sh
set -euo pipefail
: "${PEFT_TRAINER:?set PEFT_TRAINER to a LoRA-capable training script}"
: "${CKPT:?set CKPT to a checkpoint written by bridgectl import}"
: "${DATA:?set DATA to the training data}"
: "${SAVE:?set SAVE to an output folder}"
TP="${TP:-1}"; PP="${PP:-1}"
GPUS="${SLURM_GPUS_ON_NODE:-8}"
HEAD="$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" | head -n 1)"
mkdir -p "$SAVE"
python -m {{ cookiecutter.__module_name }}.recipes peft --tp "$TP" --pp "$PP" --json > "$SAVE/recipe.json"
RECIPE=$(python -m {{ cookiecutter.__module_name }}.recipes peft --tp "$TP" --pp "$PP")

# shellcheck disable=SC2086  # RECIPE is a list of flags
srun torchrun --nnodes "${SLURM_NNODES:-1}" --nproc-per-node "$GPUS" \
    --rdzv-backend c10d --rdzv-endpoint "$HEAD:29500" \
    "$PEFT_TRAINER" \
    --load "$CKPT" --ckpt-format torch_dist --use-checkpoint-args \
    --tokenizer-type HuggingFaceTokenizer --tokenizer-model "$CKPT/tokenizer" \
    --data-path "$DATA" --save "$SAVE" \
    $RECIPE
