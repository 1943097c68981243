#!/usr/bin/env bash
#SBATCH --job-name={{ cookiecutter.__model_slug }}-peft
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=02:00:00
#SBATCH --output=%x-%j.out
# LoRA fine-tuning with a {{ cookiecutter.family }}_peft recipe. 'bridgectl train' has no adapters yet (the
# training config has no LoRA settings), so this plugin registers no peft recipe: running a peft
# recipe as full fine-tuning would be silently wrong. Until it does, use slurm_sft.sh (full
# fine-tuning); then register {{ cookiecutter.family }}_peft in plugin.py and recipes.py and run it as slurm_sft.sh does.
set -euo pipefail
echo "slurm_peft.sh: bridgectl train has no PEFT (LoRA) yet; use slurm_sft.sh for full fine-tuning" >&2
exit 2
