"""The typed training configuration a recipe carries (torch-free), and dotted ``key=value`` overrides.

Sections mirror what a Megatron-Bridge ``ConfigContainer`` holds that this trainer runs: model
(provider) overrides, parallel sizes, optimizer, LR schedule, train loop, precision, activation
recompute, core attention, data, checkpointing and logging. Every field has a type the overrides are checked against.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from bridge_core.errors import ConfigError


@dataclass
class ParallelConfig:
    """Model parallel sizes; the data-parallel size is derived: world / (tp * pp * cp)."""

    tp: int = 1
    pp: int = 1
    vpp: int | None = None  # virtual pipeline stages per pipeline rank (interleaved 1F1B)
    ep: int = 1
    etp: int | None = None  # expert tensor parallel (default: tp)
    cp: int = 1  # context parallel: needs Transformer Engine (the local spec has none)
    sequence_parallel: bool = False

    def model_parallel(self) -> int:
        return self.tp * self.pp * self.cp

    def data_parallel(self, world: int) -> int:
        """The data-parallel size at ``world`` ranks, or a one-line error if the sizes do not divide it."""
        if world % self.model_parallel():
            raise ConfigError(
                f"world size {world} is not a multiple of parallel.tp={self.tp} x parallel.pp={self.pp} "
                f"x parallel.cp={self.cp} (= {self.model_parallel()})"
            )
        return world // self.model_parallel()


@dataclass
class OptimizerConfig:
    """Adam or AdamW (decoupled weight decay) through megatron-core's ``get_megatron_optimizer``."""

    name: Literal["adam", "adamw"] = "adamw"
    lr: float = 3e-4
    min_lr: float = 3e-5
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    clip_grad: float = 1.0
    use_distributed_optimizer: bool = True
    # How the distributed optimizer's state is laid out in checkpoints: dp_reshardable (faster, same
    # TP/PP on resume) or fully_reshardable (resume at other TP/PP/DP).
    dist_ckpt_sharding: Literal["dp_reshardable", "fully_reshardable"] = "dp_reshardable"


@dataclass
class SchedulerConfig:
    """megatron-core's ``OptimizerParamScheduler``: linear warmup, then the decay style."""

    style: Literal["cosine", "linear", "constant", "wsd", "inverse-square-root"] = "cosine"
    lr_warmup_iters: int = 500
    lr_decay_iters: int | None = None  # default: train.iters
    lr_wsd_decay_iters: int | None = None  # wsd: length of the final decay
    lr_wsd_decay_style: Literal["linear", "cosine", "exponential", "minus_sqrt"] = "exponential"
    weight_decay_incr_style: Literal["constant", "linear", "cosine"] = "constant"


@dataclass
class TrainLoopConfig:
    """Iterations, batch sizes (in sequences) and sequence length."""

    iters: int = 300_000
    global_batch_size: int = 32
    micro_batch_size: int = 2
    seq_length: int = 4096
    seed: int = 1234
    eval_interval: int | None = 500  # None: no validation
    eval_iters: int = 32


@dataclass
class PrecisionConfig:
    """``auto``: bf16 on GPU, fp32 on CPU (bf16 on CPU is ten times slower)."""

    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    grad_reduce_in_fp32: bool = True


@dataclass
class RecomputeConfig:
    """Activation recompute (megatron-core's ``recompute_granularity`` / method / num_layers)."""

    granularity: Literal["full", "selective"] | None = None
    method: Literal["uniform", "block"] | None = None
    num_layers: int | None = None


@dataclass
class AttentionConfig:
    """The core attention of every layer: ``sdpa`` (``bridge_core.modeling.attention.SDPACoreAttention`` over
    ``scaled_dot_product_attention``), ``local`` (the layer spec as the provider builds it: megatron-core's
    unfused ``DotProductAttention`` on the local spec), ``auto`` (``sdpa`` unless Transformer Engine's
    attention is in use)."""

    core_attention: Literal["auto", "sdpa", "local"] = "auto"
    compiled_rope: bool = False  # torch.compile megatron-core's RoPE (CUDA; its fused kernel needs TE)


@dataclass
class DataConfig:
    """``mock``: megatron-core's learnable mock documents; ``pretrain``: indexed datasets (``.bin/.idx``
    prefixes, optionally weighted like Megatron-LM's ``--data-path 0.3 a 0.7 b``); ``sft``: the prefix
    ``bridgectl data prepare --format sft`` wrote (token ids and loss mask), ``packing``: several
    examples per sequence (position ids restart, attention stays within each example)."""

    kind: Literal["mock", "pretrain", "sft"] = "mock"
    paths: list[str] = field(default_factory=list)
    sft_prefix: str | None = None
    packing: bool = False
    split: str = "9999,8,2"


@dataclass
class CheckpointConfig:
    """Megatron-LM ``torch_dist`` checkpoints: ``save`` folder, every ``save_interval`` steps and at the
    end, keep the last ``keep_last_n`` (None: all); ``load``: resume from this folder's latest."""

    save: str | None = None
    save_interval: int | None = 500
    keep_last_n: int | None = None
    load: str | None = None


PEFT_TARGETS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")
# multi-latent attention's up-projections (DeepSeek): column-parallel, their outputs split like linear_qkv's
MLA_TARGETS = ("linear_q_proj", "linear_q_up_proj", "linear_kv_up_proj")
# every MoE expert's linears (opt-in; LoRA only): HF PEFT's target_parameters on the fused expert tensors
EXPERT_TARGETS = ("experts.linear_fc1", "experts.linear_fc2")


def check_expert_targets(peft: Any) -> None:
    """Expert adapters are LoRA without dropout (``peft``'s ``target_parameters`` accept no other)."""
    experts = [t for t in peft.targets if t in EXPERT_TARGETS]
    if experts and peft.scheme == "dora":
        raise ConfigError(f"peft.scheme=dora with peft.targets {experts[0]}: expert adapters are LoRA only")
    if experts and peft.dropout > 0:
        raise ConfigError(f"peft.dropout={peft.dropout:g} with peft.targets {experts[0]}: expert adapters need 0")


@dataclass
class PeftConfig:
    """Parameter-efficient fine-tuning: ``lora`` or ``dora`` adapters on the ``targets`` linears of every
    layer (megatron-core names: ``linear_qkv``, ``linear_proj``, ``linear_fc1``, ``linear_fc2``); the base
    stays frozen and checkpoints hold the adapters only. ``alpha / rank`` scales the update."""

    scheme: Literal["lora", "dora"] | None = None  # None: full fine-tuning
    rank: int = 32
    alpha: float = 32.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(PEFT_TARGETS))
    adapter: str | None = None  # start from this HF PEFT folder (its r, alpha and targets replace the above)


@dataclass
class LoggingConfig:
    log_interval: int = 1


@dataclass
class TrainingConfig:
    """Everything a run needs besides the model's architecture: the typed config of a recipe."""

    model: dict[str, Any] = field(default_factory=dict)  # provider field overrides, e.g. num_layers
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    recompute: RecomputeConfig = field(default_factory=RecomputeConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingConfig:
        """Rebuild a config saved with ``to_dict`` (every value checked as an override would be)."""
        config = cls()
        for key, value in _flatten(values):
            set_value(config, key, value)
        return config

    def check(self, world: int | None = None, run: bool = False) -> None:
        """Static checks of values and their combinations (one-line ``ConfigError``), before any rank starts.

        ``run``: also require what only a run needs (data paths), which a recipe may leave to the user.
        """
        _check(self, world, run)


def _flatten(values: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in values.items():
        if not prefix and key == "model" and isinstance(value, dict):
            out += [(f"model.{k}", v) for k, v in value.items()]
        elif isinstance(value, dict):
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


# -- overrides ----------------------------------------------------------------------------------


def _fields(obj: Any) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(obj)}


def _choices(tp: Any) -> list[Any] | None:
    if typing.get_origin(tp) is Literal:
        return list(typing.get_args(tp))
    return None


def _members(tp: Any) -> tuple[list[Any], bool]:
    """The members of a (possibly optional) union type, and whether None is allowed."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = list(typing.get_args(tp))
        return [a for a in args if a is not type(None)], type(None) in args
    return [tp], False


def _parse_literal(text: str) -> Any:
    """A command-line value as JSON where it parses (numbers, true/false, null, lists), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        if lowered in ("none", "null"):
            return None
        return text


def _describe(tp: Any) -> str:
    members, optional = _members(tp)
    names = []
    for m in members:
        choices = _choices(m)
        names.append(" | ".join(map(str, choices)) if choices else getattr(m, "__name__", str(m)))
    return " | ".join(names) + (" | none" if optional else "")


def _coerce(key: str, tp: Any, value: Any) -> Any:
    members, optional = _members(tp)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigError(f"{key}: cannot be none (expected {_describe(tp)})")
    for member in members:
        choices = _choices(member)
        if choices is not None:
            if value in choices:
                return value
            continue
        origin = typing.get_origin(member) or member
        if origin is bool:
            if isinstance(value, bool):
                return value
        elif origin is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
        elif origin is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif origin is str:
            if isinstance(value, str):
                return value
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
        elif origin is list:
            items = value if isinstance(value, list) else [value]
            return [str(v) for v in items]
    raise ConfigError(f"{key}: {value!r} is not valid; expected {_describe(tp)}")


def set_value(config: TrainingConfig, key: str, value: Any) -> None:
    """Set the dotted ``key`` (e.g. ``optimizer.lr``) to ``value`` after checking it against the field type.

    ``model.<name>`` sets a provider field override (checked against the provider when the model is built).
    """
    parts = key.split(".")
    sections = _fields(config)
    if parts[0] not in sections:
        raise ConfigError(f"unknown setting {key!r}; sections: {', '.join(sections)}")
    if parts[0] == "model":
        if len(parts) != 2 or not parts[1]:
            raise ConfigError(f"{key}: model overrides take one provider field name, e.g. model.num_layers=2")
        config.model[parts[1]] = _parse_literal(value) if isinstance(value, str) else value
        return
    section = getattr(config, parts[0])
    known = _fields(section)
    if len(parts) != 2 or parts[1] not in known:
        raise ConfigError(f"unknown setting {key!r}; {parts[0]} has: {', '.join(known)}")
    tp = typing.get_type_hints(type(section))[parts[1]]
    setattr(section, parts[1], _coerce(key, tp, _from_text(tp, value) if isinstance(value, str) else value))


def _from_text(tp: Any, text: str) -> Any:
    """A command-line string as the value it means for a field of type ``tp``."""
    members, optional = _members(tp)
    if optional and text.lower() in ("none", "null"):
        return None
    if members == [str]:
        return text
    if any(typing.get_origin(m) is list for m in members):
        return _parse_literal(text) if text.startswith("[") else [p for p in text.split(",") if p]
    return _parse_literal(text)


def apply_overrides(config: TrainingConfig, overrides: list[str]) -> TrainingConfig:
    """Apply ``key=value`` strings in order (a copy; ``config`` is unchanged)."""
    out = TrainingConfig.from_dict(config.to_dict())
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value (e.g. train.iters=20)")
        set_value(out, key.strip(), value)
    return out


# -- checks -------------------------------------------------------------------------------------


def _positive(key: str, value: int | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value < 1:
        raise ConfigError(f"{key} must be at least 1, got {value}")


def _check(c: TrainingConfig, world: int | None, run: bool) -> None:
    p, t, o, s = c.parallel, c.train, c.optimizer, c.scheduler
    for name in ("tp", "pp", "ep", "cp"):
        _positive(f"parallel.{name}", getattr(p, name))
    _positive("parallel.vpp", p.vpp, allow_none=True)
    _positive("parallel.etp", p.etp, allow_none=True)
    if p.vpp is not None and p.vpp > 1 and p.pp < 2:
        raise ConfigError(f"parallel.vpp={p.vpp} needs parallel.pp >= 2 (interleaved pipeline)")
    for name in ("iters", "global_batch_size", "micro_batch_size", "seq_length", "eval_iters"):
        _positive(f"train.{name}", getattr(t, name))
    _positive("train.eval_interval", t.eval_interval, allow_none=True)
    _positive("logging.log_interval", c.logging.log_interval)
    _positive("checkpoint.save_interval", c.checkpoint.save_interval, allow_none=True)
    _positive("checkpoint.keep_last_n", c.checkpoint.keep_last_n, allow_none=True)
    if t.global_batch_size % t.micro_batch_size:
        raise ConfigError(
            f"train.global_batch_size={t.global_batch_size} is not a multiple of "
            f"train.micro_batch_size={t.micro_batch_size}"
        )
    if world is not None:
        dp = p.data_parallel(world)
        if t.global_batch_size % (t.micro_batch_size * dp):
            raise ConfigError(
                f"train.global_batch_size={t.global_batch_size} is not a multiple of train.micro_batch_size="
                f"{t.micro_batch_size} x data parallel {dp} (world {world} / tp x pp x cp)"
            )
    if not 0 <= o.min_lr <= o.lr:
        raise ConfigError(f"optimizer.min_lr={o.min_lr} must lie between 0 and optimizer.lr={o.lr}")
    if s.lr_warmup_iters < 0:
        raise ConfigError(f"scheduler.lr_warmup_iters must be >= 0, got {s.lr_warmup_iters}")
    decay = s.lr_decay_iters if s.lr_decay_iters is not None else t.iters
    if s.lr_warmup_iters and s.lr_warmup_iters >= decay:  # megatron-core asserts warmup < decay
        raise ConfigError(
            f"scheduler.lr_warmup_iters={s.lr_warmup_iters} must be shorter than the decay ({decay} iterations; "
            "scheduler.lr_decay_iters, default train.iters)"
        )
    if s.style == "wsd" and not s.lr_wsd_decay_iters:
        raise ConfigError("scheduler.style=wsd needs scheduler.lr_wsd_decay_iters (the final decay's length)")
    if run and c.data.kind == "pretrain" and not c.data.paths:
        raise ConfigError("data.kind=pretrain needs data.paths (indexed dataset prefixes, comma-separated)")
    if run and c.data.kind == "sft" and not c.data.sft_prefix:
        raise ConfigError(
            "data.kind=sft needs data.sft_prefix (the --output PREFIX of 'bridgectl data prepare --format sft')"
        )
    if c.data.packing and c.data.kind != "sft":
        raise ConfigError(f"data.packing=true packs SFT examples; it needs data.kind=sft, not {c.data.kind}")
    _check_peft(c)
    if c.recompute.granularity == "full" and c.recompute.method is None:
        raise ConfigError("recompute.granularity=full needs recompute.method (uniform | block)")


def _check_peft(c: TrainingConfig) -> None:
    f = c.peft
    if f.scheme is None:
        return
    _positive("peft.rank", f.rank)
    if f.alpha <= 0:
        raise ConfigError(f"peft.alpha must be positive, got {f.alpha}")
    if not 0 <= f.dropout < 1:
        raise ConfigError(f"peft.dropout must lie in [0, 1), got {f.dropout}")
    known = PEFT_TARGETS + MLA_TARGETS + EXPERT_TARGETS
    unknown = [t for t in f.targets if t not in known]
    if unknown or not f.targets:
        listed = ", ".join(unknown) or "empty"
        raise ConfigError(f"peft.targets: {listed} not supported; choose from {', '.join(known)}")
    check_expert_targets(f)
    etp = c.parallel.etp or c.parallel.tp
    if set(f.targets) <= set(EXPERT_TARGETS) and (c.parallel.ep > 1 or etp > 1):
        raise ConfigError(  # megatron-core 0.16's chained optimizer cannot save with an empty dense part
            f"peft.targets={','.join(f.targets)} with parallel.ep={c.parallel.ep}, etp={etp}: add a dense "
            "target (e.g. linear_proj); megatron-core's optimizer needs a trainable non-expert parameter"
        )
    if c.parallel.sequence_parallel:
        raise ConfigError(
            f"peft.scheme={f.scheme} with parallel.sequence_parallel=true is not supported yet; "
            "set parallel.sequence_parallel=false"
        )
