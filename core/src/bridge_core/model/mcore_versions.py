"""TransformerConfig fields that exist in only some of the megatron-core versions bridge-core supports.

A checkpoint's ``run_config.json`` stores every provider setting by name. Read under another
megatron-core version, a setting the installed one lacks is dropped when it holds that version's
default (the model did not use the feature); these tables give those defaults for checkpoints
written before ``run_config.json`` recorded them itself (``provider_at_default``). Captured from
the dataclass fields of megatron-core 0.16.1 and 0.19.2 (core/tests/fixtures/mcore_provider_*.json).
"""

from __future__ import annotations

from typing import Any

# Fields of 0.16.1 that 0.19.2 no longer has, with their 0.16.1 defaults.
ONLY_IN_0_16: dict[str, Any] = {
    "async_tensor_model_parallel_allreduce": True,
    "moe_extended_tp": False,
    "moe_use_legacy_grouped_gemm": False,
}

# Fields new in 0.19.2, with their 0.19.2 defaults.
ONLY_IN_0_19: dict[str, Any] = {
    "activation_offload_fraction": 1.0,
    "cpu_offloading_retain_pinned_cpu_buffers": False,
    "cuda_graph_modules": "full",
    "delay_offload_until_cuda_graph": False,
    "delta_offload_bytes_across_pp_ranks": 0,
    "dsa_indexer_k_norm_epsilon": None,
    "dsa_indexer_k_norm_fp32": False,
    "dsa_indexer_rope_interleaved": False,
    "dsa_indexer_rotate_activation": True,
    "dsa_indexer_scoring_relu": True,
    "dsa_indexer_skip_topk_offset": 0,
    "dsa_indexer_topk_freq": 1,
    "dsa_kernel_backend": "none",
    "experimental_attention_variant_loss_scale_func": None,
    "expert_gtp_weight_remat_size": 1,
    "expert_tensor_parallel_num_weight_shards": None,
    "fine_grained_offloading_max_inflight_offloads": None,
    "flash_attention_version": None,
    "fp8_output_proj": False,
    "fused_residual_rmsnorm": False,
    "gtp_weight_remat_size": 1,
    "high_priority_a2a_comm_stream": False,
    "inference_cuda_graph_scope": None,
    "inference_disable_triton_nvls_kernels": False,
    "inference_grouped_gemm_backend": "vllm",
    "inference_moe_disable_fused_quant_kernels": False,
    "inference_moe_token_dispatcher_type": "nvls",
    "mamba_training_ssm_states_dtype": None,
    "mlp_chunks_for_training": 1,
    "moe_expert_rank_capacity_factor": None,
    "moe_flex_dispatcher_num_sms": None,
    "moe_grad_scale_func": None,
    "moe_hybridep_num_blocks_permute": None,
    "moe_hybridep_num_blocks_unpermute": None,
    "moe_hybridep_num_sms_preprocessing": 108,
    "moe_hybridep_pad_uneven_dispatch_inputs": False,
    "moe_mlp_glu_interleave_size": None,
    "moe_ncclep_static_shape": False,
    "moe_ncclep_zero_copy": False,
    "moe_pad_experts_for_cuda_graph_inference": False,
    "moe_paged_stash": False,
    "moe_paged_stash_buffer_size_factor_cpu": 0.0,
    "moe_paged_stash_buffer_size_factor_cuda": 1.1,
    "moe_paged_stash_page_size": 64,
    "moe_permute_fusion_into_hybridep": False,
    "moe_router_force_biased": None,
    "moe_router_quantile_balancing_ema": 0.0,
    "moe_shared_expert_glu_interleave_size": None,
    "moe_single_grouped_bias": False,
    "moe_single_grouped_weight": False,
    "mtp_detach_heads": False,
    "mtp_grad_scale_func": None,
    "mtp_hybrid_override_pattern": None,
    "mtp_use_repeated_layer": False,
    "mup_attn_scale_power": 1.0,
    "mup_base_head_dim": None,
    "mup_base_hidden_size": None,
    "mup_embedding_mult": 1.0,
    "mup_output_mult": 1.0,
    "mup_width_mult": 1.0,
    "nccl_all_reduce_for_prefill": False,
    "overlap_dispatch_backward_with_experts_wgrad": False,
    "tensor_parallel_num_weight_shards": None,
    "use_grouped_gemm_for_dense_mlp": False,
    "use_grouped_gemm_for_shared_expert": False,
    "use_mup": False,
    "use_transformer_engine_op_fuser": False,
}

FOREIGN_DEFAULTS: dict[str, Any] = {**ONLY_IN_0_16, **ONLY_IN_0_19}

# Settings of how a run is parallelised, offloaded or scheduled, never of the model's math: dropped
# whatever their value when the installed megatron-core does not have them.
HARMLESS_FOREIGN = frozenset(
    {
        "async_tensor_model_parallel_allreduce",
        "moe_extended_tp",
        "moe_use_legacy_grouped_gemm",
        "tensor_parallel_num_weight_shards",
        "expert_tensor_parallel_num_weight_shards",
        "gtp_weight_remat_size",
        "expert_gtp_weight_remat_size",
        "cuda_graph_modules",
        "inference_cuda_graph_scope",
        "high_priority_a2a_comm_stream",
        "nccl_all_reduce_for_prefill",
    }
)

# Fields both versions have, with another default: {name: {version: default}}. A checkpoint holding
# its writer's default takes the installed one (0.19.2 refuses 0.16.1's SM-count defaults together).
CHANGED_DEFAULTS: dict[str, dict[str, Any]] = {
    "cuda_graph_scope": {"0.16.1": "full", "0.19.2": None},
    "cuda_graph_use_single_mempool": {"0.16.1": False, "0.19.2": True},
    "moe_deepep_num_sms": {"0.16.1": 20, "0.19.2": None},
    "moe_hybridep_num_sms": {"0.16.1": 16, "0.19.2": None},
}


def mlp_submodules(mlp_spec: Any) -> Any:
    """The ``MLPSubmodules`` of a layer spec's ``mlp`` entry, to edit in place (e.g. ``linear_fc2``).

    megatron-core 0.16.1 gives a ``ModuleSpec`` (``.submodules``); 0.19.2 a
    ``functools.partial(MLP.as_mlp_submodule, submodules=...)``.
    """
    submodules = getattr(mlp_spec, "submodules", None)
    if submodules is None:
        submodules = getattr(mlp_spec, "keywords", {}).get("submodules")
    if submodules is None:
        raise TypeError(f"cannot find the MLP submodules of the layer spec's mlp entry {mlp_spec!r}")
    return submodules


def reset_moe_metrics() -> None:
    """Forget megatron-core's MoE per-layer metrics. They are sized by the first model's layer count, so
    a later run in the same process with more layers indexes past them (IndexError in the router)."""
    try:
        from megatron.core.transformer.moe import moe_logging  # 0.19: a tracker object
    except ImportError:
        from megatron.core.transformer.moe import moe_utils  # 0.16: a module-level dict

        moe_utils.get_moe_layer_wise_logging_tracker().clear()
        return
    moe_logging._MOE_METRICS_TRACKER = None
