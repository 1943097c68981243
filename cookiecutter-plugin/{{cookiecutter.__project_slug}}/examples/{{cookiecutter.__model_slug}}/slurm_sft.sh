#!/usr/bin/env bash
#SBATCH --job-name={{ cookiecutter.__model_slug }}-sft
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=04:00:00
#SBATCH --output=%x-%j.out
# Supervised fine-tuning of a converted checkpoint with Megatron-LM, using this plugin's sft recipe.
#   MEGATRON_LM  a Megatron-LM checkout (pretrain_gpt.py)
#   CKPT         the converted checkpoint (conversion.sh's WORK_DIR/megatron)
#   DATA         a Megatron-LM data prefix (tools/preprocess_data.py output)
#   SAVE         where checkpoints go; TP, PP: parallel sizes (default 1)
# Usage: MEGATRON_LM=... CKPT=... DATA=... SAVE=... sbatch slurm_sft.sh
set -euo pipefail
: "${MEGATRON_LM:?set MEGATRON_LM to a Megatron-LM checkout}"
: "${CKPT:?set CKPT to a checkpoint written by bridgectl import}"
: "${DATA:?set DATA to a Megatron-LM data prefix}"
: "${SAVE:?set SAVE to an output folder}"
TP="${TP:-1}"; PP="${PP:-1}"
GPUS="${SLURM_GPUS_ON_NODE:-8}"
HEAD="$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" | head -n 1)"
RECIPE=$(python -m {{ cookiecutter.__module_name }}.recipes sft --tp "$TP" --pp "$PP")

# --finetune: start from the weights at iteration 0 (the checkpoint holds no optimizer state).
# shellcheck disable=SC2086  # RECIPE is a list of flags
srun torchrun --nnodes "${SLURM_NNODES:-1}" --nproc-per-node "$GPUS" \
    --rdzv-backend c10d --rdzv-endpoint "$HEAD:29500" \
    "$MEGATRON_LM/pretrain_gpt.py" \
    --load "$CKPT" --ckpt-format torch_dist --use-checkpoint-args \
    --tokenizer-type HuggingFaceTokenizer --tokenizer-model "$CKPT/tokenizer" \
    --data-path "$DATA" --save "$SAVE" \
    $RECIPE
# Note: 'bridgectl export' reads the run_config.json that 'bridgectl import' writes next to a checkpoint;
# Megatron-LM's training loop does not write one into SAVE.
