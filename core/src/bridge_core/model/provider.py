"""``GPTModelProvider``: a megatron-core ``TransformerConfig`` plus what it takes to build the model.

As in Megatron-Bridge, a bridge returns a provider; callers adjust parallelism on it, call
``finalize()`` (validation, deferred until then), and ``provide_distributed_model()`` to get this
rank's model chunks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from megatron.core.transformer import TransformerConfig

from bridge_core.errors import ConfigError
from bridge_core.runtime.cpu_support import cuda_available, tensor_cuda_is_identity
from bridge_core.runtime.parallel import ensure_model_parallel
from bridge_core.runtime.parallel_checks import ModelShape, check_parallel_sizes
from bridge_core.runtime.parallelism import Parallelism


def transformer_engine_available() -> bool:
    """True when Transformer Engine imports (and CUDA is present to run it)."""
    if not cuda_available():
        return False
    try:
        import transformer_engine  # noqa: F401
    except Exception:
        return False
    return True


@dataclass
class GPTModelProvider(TransformerConfig):  # type: ignore[misc]  # megatron-core is untyped here (Any)
    """Builds megatron-core ``GPTModel`` chunks for this rank from a translated HF config.

    ``transformer_layer_spec`` is ``"local"`` (megatron-core's own modules; CPU-capable),
    ``"te"`` (Transformer Engine), ``"auto"`` (TE when it is installed and CUDA is present), or a
    ``ModuleSpec``/callable returning one.
    """

    transformer_layer_spec: Any = "auto"
    vocab_size: int | None = None
    padded_vocab_size: int | None = None
    make_vocab_size_divisible_by: int = 128
    seq_length: int = 4096
    share_embeddings_and_output_weights: bool = False
    position_embedding_type: str = "rope"
    rotary_base: float = 10000.0
    rotary_percent: float = 1.0
    rope_scaling: bool = False
    rope_scaling_factor: float = 8.0
    seq_len_interpolation_factor: float | None = None
    parallel_output: bool = True
    fp16_lm_cross_entropy: bool = False

    def __post_init__(self) -> None:
        """Validation is deferred to ``finalize()`` so parallel sizes can be set after construction."""
        self._finalized = False

    # -- validation -----------------------------------------------------------------------------
    def finalize(self) -> GPTModelProvider:
        """Validate the settings (clear errors naming the setting) and complete derived fields."""
        self._check_parallel_sizes()
        # The parameter dtype decides (megatron-core's softmax follows bf16/fp16 at build time).
        self.bf16, self.fp16 = self.params_dtype == torch.bfloat16, self.params_dtype == torch.float16
        if self.pipeline_model_parallel_size > 1 and self.pipeline_dtype is None:
            self.pipeline_dtype: torch.dtype | None = self.params_dtype  # TransformerConfig's field, typed here
        if not cuda_available():
            # Kernels that exist only on CUDA, and settings torch's own norms reject.
            self.use_cpu_initialization = True
            self.masked_softmax_fusion = False
            self.gradient_accumulation_fusion = False
            self.persist_layer_norm = False
            self.bias_activation_fusion = False
            self.bias_dropout_fusion = False
            self.apply_rope_fusion = False
            if self.sequence_parallel:
                raise ConfigError("sequence_parallel=True needs CUDA (torch's norms do not support it on CPU)")
        try:
            TransformerConfig.__post_init__(self)
        except (AssertionError, ValueError) as exc:
            raise ConfigError(f"invalid model settings: {exc}") from exc
        self._finalized = True
        return self

    def _check_parallel_sizes(self) -> None:
        shape = ModelShape(
            num_attention_heads=self.num_attention_heads,
            num_query_groups=self.num_query_groups,
            num_layers=self.num_layers,
            num_moe_experts=self.num_moe_experts,
            padded_vocab_size=self.padded_vocab_size,
            uneven_pipeline=bool(self.num_layers_in_first_pipeline_stage or self.num_layers_in_last_pipeline_stage),
        )
        check_parallel_sizes(
            shape,
            tp=self.tensor_model_parallel_size,
            pp=self.pipeline_model_parallel_size,
            ep=self.expert_model_parallel_size,
            vp=self.virtual_pipeline_model_parallel_size,
        )
        if self.vocab_size is None:
            raise ConfigError("vocab_size is not set on the provider")

    @property
    def vocab_size_with_padding(self) -> int:
        """The vocabulary size Megatron allocates: a multiple of ``make_vocab_size_divisible_by * TP``."""
        if self.padded_vocab_size is not None:
            return self.padded_vocab_size
        multiple = self.make_vocab_size_divisible_by * self.tensor_model_parallel_size
        return int(math.ceil(self.vocab_size / multiple) * multiple)

    @property
    def parallel_sizes(self) -> Parallelism:
        return Parallelism(
            tp=self.tensor_model_parallel_size,
            pp=self.pipeline_model_parallel_size,
            vp=self.virtual_pipeline_model_parallel_size,
            ep=self.expert_model_parallel_size,
            etp=self.expert_tensor_parallel_size,
        )

    # -- building -------------------------------------------------------------------------------
    def uses_transformer_engine(self) -> bool:
        spec = self.transformer_layer_spec
        return spec == "te" or (spec == "auto" and transformer_engine_available())

    def layer_spec(self, vp_stage: int | None = None) -> Any:
        """The layer (or decoder block) spec for this rank's stage."""
        from megatron.core.models.gpt import gpt_layer_specs as specs
        from megatron.core.transformer.spec_utils import ModuleSpec

        spec = self.transformer_layer_spec
        if not isinstance(spec, str):
            return spec(self) if callable(spec) and not isinstance(spec, ModuleSpec) else spec
        if spec not in ("auto", "local", "te"):
            raise ConfigError(f"transformer_layer_spec must be 'auto', 'local', 'te' or a ModuleSpec, got {spec!r}")
        use_te = self.uses_transformer_engine()
        if spec == "te" and not transformer_engine_available():
            raise ConfigError("transformer_layer_spec='te' needs Transformer Engine and CUDA; use 'local'")
        if self.num_moe_experts:
            return specs.get_gpt_decoder_block_spec(
                self, use_transformer_engine=use_te, normalization=self.normalization, vp_stage=vp_stage
            )
        if use_te:
            return specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=self.qk_layernorm)
        return specs.get_gpt_layer_local_spec(qk_layernorm=self.qk_layernorm, normalization=self.normalization)

    def provide(
        self, pre_process: bool | None = None, post_process: bool | None = None, vp_stage: int | None = None
    ) -> Any:
        """Build one ``GPTModel`` chunk (needs model parallelism initialised)."""
        from megatron.core import parallel_state as ps
        from megatron.core.models.gpt import GPTModel

        if not self._finalized:
            self.finalize()
        if pre_process is None:
            pre_process = ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
        if post_process is None:
            post_process = ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
        with tensor_cuda_is_identity():  # the tied output layer of the last stage calls .cuda()
            return GPTModel(
                config=self,
                transformer_layer_spec=self.layer_spec(vp_stage),
                vocab_size=self.vocab_size_with_padding,
                max_sequence_length=self.seq_length,
                pre_process=pre_process,
                post_process=post_process,
                fp16_lm_cross_entropy=self.fp16_lm_cross_entropy,
                parallel_output=self.parallel_output,
                share_embeddings_and_output_weights=self.share_embeddings_and_output_weights,
                position_embedding_type=self.position_embedding_type,
                rotary_percent=self.rotary_percent,
                rotary_base=self.rotary_base,
                rope_scaling=self.rope_scaling,
                rope_scaling_factor=self.rope_scaling_factor,
                seq_len_interpolation_factor=self.seq_len_interpolation_factor,
                vp_stage=vp_stage,
            )

    def initialize_model_parallel(self, seed: int = 1234) -> None:
        """Start ``torch.distributed`` if needed and initialise model parallelism with these sizes."""
        ensure_model_parallel(self.parallel_sizes, seed=seed)

    def provide_distributed_model(
        self,
        ddp_config: Any = None,
        wrap_with_ddp: bool = False,
        pre_wrap_hook: Callable[[list[Any]], list[Any]] | list[Callable[[list[Any]], list[Any]]] | None = None,
        seed: int = 1234,
        **unused: Any,
    ) -> list[Any]:
        """This rank's model chunks (one per virtual pipeline stage), on its device.

        Initialises ``torch.distributed`` (gloo on CPU, NCCL with CUDA) and megatron-core's
        model-parallel state when the caller has not. ``pre_wrap_hook``(s) run before DDP wrapping.
        """
        if not self._finalized:
            self.finalize()
        self.initialize_model_parallel(seed=seed)
        stages = self.virtual_pipeline_model_parallel_size
        chunks = [self.provide(vp_stage=i if stages else None) for i in range(stages or 1)]
        if cuda_available():  # a chunk built on the meta device (a plan, no weights) stays there
            chunks = [c if _on_meta(c) else c.cuda(torch.cuda.current_device()) for c in chunks]
        hooks = pre_wrap_hook if isinstance(pre_wrap_hook, list) else [pre_wrap_hook] if pre_wrap_hook else []
        for hook in hooks:
            chunks = hook(chunks) or chunks
        if wrap_with_ddp:
            from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

            ddp_config = ddp_config or DistributedDataParallelConfig()
            chunks = [
                DistributedDataParallel(config=self, ddp_config=ddp_config, module=c, disable_bucketing=i > 0)
                for i, c in enumerate(chunks)
            ]
        return chunks


def _on_meta(module: torch.nn.Module) -> bool:
    return any(p.is_meta for p in module.parameters())
