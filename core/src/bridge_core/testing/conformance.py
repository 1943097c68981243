"""The conformance suite a plugin runs against its bridges: subclass ``BridgeConformance``.

    from bridge_core.testing.conformance import BridgeConformance, ToyModel

    class TestQwenConformance(BridgeConformance):
        plugin = "qwen"
        toys = {"qwen2": ToyModel("Qwen2ForCausalLM", {"model_type": "qwen2", ...})}

For every toy: config translation both ways, coverage, a bit-exact HF -> Megatron -> HF roundtrip,
fp32 logit parity with transformers (<= 1e-4; a bf16 toy is checked on a model built in fp32 from its
bf16 weights, against transformers in fp32), and the ``parallel`` layouts (TP=2, PP=2, EP=2 for
toys tagged ``moe``; a bf16 dense toy runs in bf16, within ``BF16_TOLERANCE`` of transformers in fp32) on
CPU under gloo in one torchrun launch. The same layouts run again on GPUs
with NCCL in tests marked ``gpu`` (``gpu_parallel``; skipped with fewer than ``nproc`` CUDA devices), and
the same launched path at TP=1 on a single GPU (``test_one_gpu_launch``).
Registration checks run once: the entry point resolves under strict discovery, ``BRIDGE_CONTRACT``
parses and contains the core's contract version, the distribution requires ``bridge-core`` within
one major, the ``"module:Class"`` strings import, the entry-point module imports no torch,
megatron, transformers or safetensors, every architecture the plugin registers has a toy (here or,
named in ``toys_elsewhere``, in another class of the plugin), and the plugin loads as the host loads it, next to every
installed plugin, with no architecture another plugin also registers.

Published checkpoints are bf16: unless a toy already is, a bf16 copy of the first toy joins the
per-toy checks (``bf16_variant``; not the parallel launch, whose runtime stays flat).

Expensive results (toy folders, the parallel launch) are computed once per class and session.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest

from bridge_core.plugins.contract import CONTRACT_VERSION, contract_satisfies, parse_contract_range
from bridge_core.testing.toy import ToyModel, hf_logits, sample_ids

__all__ = ["BridgeConformance", "ToyModel"]

FP32_TOLERANCE = 1e-4
# GPU kernels (and their reduction orders) differ from transformers' CPU reference.
GPU_FP32_TOLERANCE = 1e-3
# A bf16 model's logits against transformers in fp32 from the same bf16 weights. Measured on the
# Qwen3 bf16 toy (CPU): Megatron in bf16 0.052 off, transformers' own bf16 forward 0.052 off; the
# same toy with q_norm/k_norm swapped is 0.45 off (fp32 and bf16 alike).
BF16_TOLERANCE = 0.15
HEAVY = ("torch", "megatron", "transformers", "safetensors")


def layout_fits(toy: ToyModel, layout: dict[str, Any]) -> bool:
    """Whether a parallel layout applies to a toy (tags required, heads/layers/experts divisible)."""
    cfg = toy.config
    if layout.get("requires") and layout["requires"] not in toy.tags:
        return False
    tp, pp, ep = layout.get("tp", 1), layout.get("pp", 1), layout.get("ep", 1)
    kv = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    experts = cfg.get("num_experts") or cfg.get("num_local_experts") or 0
    return (
        cfg["num_attention_heads"] % tp == 0
        and kv % tp == 0
        and cfg["num_hidden_layers"] % pp == 0
        and (ep == 1 or (bool(experts) and experts % ep == 0))
    )


class BridgeConformance:
    """Base class of a plugin's conformance tests (see the module docstring).

    Set ``plugin`` (the entry-point name) and ``toys`` (name -> ``ToyModel``); optionally
    ``parallel`` (CPU layouts), ``gpu_parallel`` (GPU layouts, default: the same), ``seq_len``
    and ``nproc``. A layout is a dict of ``tp``, ``pp``, ``ep``, ``etp``, ``vp``, ``load_weights``
    and ``requires`` (a toy tag such as ``"moe"``).
    """

    plugin: ClassVar[str] = ""
    toys: ClassVar[dict[str, ToyModel]] = {}
    # Architectures of this plugin whose toys are in another conformance class of the plugin.
    toys_elsewhere: ClassVar[frozenset[str]] = frozenset()
    parallel: ClassVar[dict[str, dict[str, Any]]] = {
        "tp2": {"tp": 2},
        "pp2": {"pp": 2, "load_weights": True},
        "ep2": {"ep": 2, "requires": "moe"},
    }
    gpu_parallel: ClassVar[dict[str, dict[str, Any]] | None] = None
    seq_len: ClassVar[int] = 64
    nproc: ClassVar[int] = 2
    bf16_variant: ClassVar[bool] = True

    @classmethod
    def checked_toys(cls) -> dict[str, ToyModel]:
        """``toys``, plus a bf16 copy of the first one when none is bf16 (``bf16_variant``)."""
        toys = dict(cls.toys)
        if cls.bf16_variant and toys and not any(t.dtype == "bfloat16" for t in toys.values()):
            first = sorted(toys)[0]
            toys[f"{first}-bf16"] = dataclasses.replace(toys[first], dtype="bfloat16")
        return toys

    def pytest_generate_tests(self, metafunc: Any) -> None:
        if "toy_name" in metafunc.fixturenames:
            metafunc.parametrize("toy_name", sorted(self.checked_toys()))
        if "parallel_case" in metafunc.fixturenames:
            metafunc.parametrize("parallel_case", self._cases(self.parallel))
        if "gpu_case" in metafunc.fixturenames:
            metafunc.parametrize("gpu_case", self._cases(self._gpu_layouts()))

    @classmethod
    def _gpu_layouts(cls) -> dict[str, dict[str, Any]]:
        return cls.parallel if cls.gpu_parallel is None else cls.gpu_parallel

    @classmethod
    def _cases(cls, layouts: dict[str, dict[str, Any]]) -> list[str]:
        return [
            f"{toy}-{name}"
            for toy in sorted(cls.toys)
            for name, layout in layouts.items()
            if layout_fits(cls.toys[toy], layout)
        ]

    # -- fixtures -------------------------------------------------------------------------------
    @pytest.fixture
    def only_this_plugin(self, monkeypatch: Any):
        """Discovery limited to this plugin, in strict mode, with a fresh registry."""
        from bridge_core.plugins.discovery import reset_registry
        from bridge_core.runtime.parallel import destroy_model_parallel

        monkeypatch.setenv("BRIDGE_PLUGINS", self.plugin)
        monkeypatch.setenv("BRIDGE_STRICT_PLUGINS", "1")
        reset_registry()
        yield
        destroy_model_parallel()
        reset_registry()

    @pytest.fixture
    def toy_folders(self, request: Any, tmp_path_factory: Any) -> dict[str, Path]:
        """Each toy saved as an HF folder (built once per session, shared by equal toys)."""
        from bridge_core.testing.pytest_plugin import session_toy_factory

        factory = session_toy_factory(request.config, tmp_path_factory)
        return {name: factory(toy) for name, toy in self.checked_toys().items()}

    @pytest.fixture
    def parallel_results(self, request: Any, toy_folders: dict[str, Path], tmp_path_factory: Any) -> dict[str, dict]:
        """Every CPU layout of every toy, run once per class in one torchrun launch (gloo)."""
        from bridge_core.testing.pytest_plugin import CpuLauncher, class_cache

        cache, key = class_cache(request.config), (type(self), "cpu")
        if key not in cache:
            work = tmp_path_factory.mktemp("parallel")
            cases = self._launch_cases(self.parallel, toy_folders, work)
            launcher = CpuLauncher(tmp_path_factory.mktemp, nproc=self.nproc)
            cache[key] = launcher.run_cases(cases, work, env=self._plugin_env()) if cases else {}
        return cache[key]

    @pytest.fixture
    def gpu_parallel_results(
        self, request: Any, toy_folders: dict[str, Path], tmp_path_factory: Any
    ) -> dict[str, dict]:
        """Every GPU layout of every toy, run once per class in one torchrun launch (NCCL)."""
        import torch

        from bridge_core.testing.launch import run_cases
        from bridge_core.testing.pytest_plugin import class_cache

        found = torch.cuda.device_count()
        if found < self.nproc:
            pytest.skip(f"needs {self.nproc} CUDA devices, found {found}")
        cache, key = class_cache(request.config), (type(self), "gpu")
        if key not in cache:
            work = tmp_path_factory.mktemp("gpu-parallel")
            cases = self._launch_cases(self._gpu_layouts(), toy_folders, work)
            cache[key] = run_cases(cases, work, nproc=self.nproc, env=self._plugin_env(), cuda=True) if cases else {}
        return cache[key]

    @pytest.fixture
    def one_gpu_results(self, request: Any, toy_folders: dict[str, Path], tmp_path_factory: Any) -> dict[str, dict]:
        """Every toy at TP=PP=EP=1 in one launch of one process on one GPU (NCCL): the launched GPU path
        of ``gpu_parallel_results`` where a machine has a single GPU."""
        import torch

        from bridge_core.testing.launch import run_cases
        from bridge_core.testing.pytest_plugin import class_cache

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")
        cache, key = class_cache(request.config), (type(self), "one-gpu")
        if key not in cache:
            work = tmp_path_factory.mktemp("one-gpu")
            cases = self._launch_cases({"tp1": {}}, toy_folders, work)
            cache[key] = run_cases(cases, work, nproc=1, env=self._plugin_env(), cuda=True) if cases else {}
        return cache[key]

    def _plugin_env(self) -> dict[str, str]:
        return {"BRIDGE_PLUGINS": self.plugin, "BRIDGE_STRICT_PLUGINS": "1"}

    def _launch_cases(self, layouts: dict[str, dict[str, Any]], folders: dict[str, Path], work: Path) -> list[dict]:
        cases = []
        for toy_name, folder in folders.items():
            if toy_name not in self.toys:
                continue  # the bf16 variant runs in-process only
            ids = work / f"{toy_name}-ids.pt"
            _save_ids(self.toys[toy_name], ids, self.seq_len)
            for name, layout in layouts.items():
                if layout_fits(self.toys[toy_name], layout):
                    settings = {k: v for k, v in layout.items() if k != "requires"}
                    case = f"{toy_name}-{name}"
                    cases.append(
                        {"name": case, "hf_path": str(folder), "ids": str(ids), "out": str(work / case), **settings}
                    )
        return cases

    # -- registration ---------------------------------------------------------------------------
    def test_plugin_registers_and_imports_nothing_heavy(self):
        code = (
            "import sys, json\nfrom bridge_core.plugins.discovery import discover\n"
            f"reg = discover(environ={{'BRIDGE_PLUGINS': {self.plugin!r}, 'BRIDGE_STRICT_PLUGINS': '1'}})\n"
            f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))\n"
            "print(json.dumps({'plugins': [p.as_dict() for p in reg.plugins if p.status != 'blocked'], "
            "'heavy': heavy}))"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        (record,) = report["plugins"]
        assert record["status"] == "loaded", record["reason"]
        assert report["heavy"] == [], f"the entry-point module imports {report['heavy']}"
        assert {t.architecture for t in self.toys.values()} <= set(record["architectures"])
        spec = parse_contract_range(record["contract"], where=record["entry_point"])
        assert contract_satisfies(spec), (
            f"BRIDGE_CONTRACT {record['contract']!r} of {record['entry_point']} does not contain "
            f"this core's contract {CONTRACT_VERSION}"
        )

    def test_every_registered_architecture_has_a_toy(self, only_this_plugin):
        from bridge_core.plugins.discovery import get_registry

        (record,) = [p for p in get_registry().plugins if p.name == self.plugin]
        toys = {t.architecture for t in self.toys.values()}
        missing = sorted(set(record.architectures) - toys - self.toys_elsewhere)
        assert not missing, (
            f"plugin {self.plugin!r} registers {', '.join(missing)} but {type(self).__name__} has no toy for it: "
            "add one to toys (or, when another conformance class of the plugin has it, to toys_elsewhere)"
        )

    def test_plugin_loads_next_to_every_installed_plugin(self):
        from bridge_core.testing.pytest_plugin import host_load_problems

        problems = host_load_problems(self.plugin)
        assert not problems, "; ".join(problems)

    def test_distribution_requires_core_within_one_major(self):
        import importlib_metadata
        from packaging.requirements import Requirement
        from packaging.version import Version

        from bridge_core import __version__ as core_version
        from bridge_core.plugins.discovery import ENTRY_POINT_GROUP, normalize

        (ep,) = [e for e in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP) if e.name == self.plugin]
        assert ep.dist is not None, f"entry point {self.plugin!r} belongs to no distribution"
        reqs = [Requirement(r) for r in ep.dist.requires or []]
        core = [
            r
            for r in reqs
            if normalize(r.name) == "bridge-core" and (r.marker is None or r.marker.evaluate({"extra": ""}))
        ]
        assert core, f"{ep.dist.name} does not depend on bridge-core (add 'bridge-core[torch]>=X.Y,<NEXT_MAJOR')"
        next_major = Version(core_version).major + 1
        for req in core:
            assert req.specifier.contains(core_version, prereleases=True), (
                f"{ep.dist.name} requires {req}, which excludes the installed bridge-core {core_version}"
            )
            assert not req.specifier.contains(f"{next_major}.0", prereleases=True), (
                f"{ep.dist.name} requires {req}: bound it below the next major (<{next_major}), "
                "since a new major contract may break it"
            )

    def test_bridge_classes_import(self, only_this_plugin):
        from bridge_core.model.bridge import MegatronModelBridge
        from bridge_core.plugins.discovery import get_registry

        registry = get_registry()
        for arch in sorted({t.architecture for t in self.toys.values()}):
            assert issubclass(registry.load_bridge_class(arch), MegatronModelBridge)

    # -- per toy --------------------------------------------------------------------------------
    def test_config_translates_both_ways(self, only_this_plugin, toy_folders, toy_name):
        from bridge_core import AutoBridge

        bridge = AutoBridge.from_hf_pretrained(toy_folders[toy_name])
        provider = bridge.to_megatron_provider()
        regenerated = bridge.hf_config_for_export(provider).to_dict()
        source = bridge.hf_config.to_dict()
        declared = {k for k, _ in bridge.bridge.CONFIG_MAPPING} | set(bridge.bridge.HANDLED_HF_CONFIG)
        declared |= set(bridge.bridge.SUPPORTED_HF_CONFIG)
        differing = {
            k: (source[k], regenerated.get(k)) for k in declared if k in source and source[k] != regenerated.get(k)
        }
        assert differing == {}, f"HF -> provider -> HF changes (source, regenerated): {differing}"

    def test_roundtrip_is_bit_exact_and_logits_match(self, only_this_plugin, toy_folders, toy_name, tmp_path):
        import torch

        from bridge_core import AutoBridge
        from bridge_core.runtime.inference import forward_logits
        from bridge_core.testing.compare import compare_hf_weights, max_abs_diff

        toy, folder = self.checked_toys()[toy_name], toy_folders[toy_name]
        bridge = AutoBridge.from_hf_pretrained(folder)
        provider = bridge.to_megatron_provider()
        provider.finalize()
        model = provider.provide_distributed_model(wrap_with_ddp=False)
        bridge.load_hf_weights(model)
        bridge.save_hf_pretrained(model, tmp_path / "out")
        problems = compare_hf_weights(folder, tmp_path / "out")
        assert problems == [], f"roundtrip differs: {problems[:5]}"
        if toy.dtype != "float32":
            # Checked in fp32: a model built in fp32 from the checkpoint's weights (never cast afterwards).
            bridge = AutoBridge.from_hf_pretrained(folder, torch_dtype=torch.float32)
            model = bridge.to_megatron_provider(load_weights=True).provide_distributed_model(wrap_with_ddp=False)
        ids = sample_ids(toy.config["vocab_size"], seq=self.seq_len)
        logits = forward_logits(model, ids, vocab_size=toy.config["vocab_size"])
        diff = max_abs_diff(logits, hf_logits(folder, ids, dtype=torch.float32))
        # The model is on the GPU when one is visible: that is this test's one-GPU variant.
        tolerance = FP32_TOLERANCE if logits.device.type == "cpu" else GPU_FP32_TOLERANCE
        assert diff <= tolerance, f"max |logits diff| {diff:.3g} > {tolerance} (on {logits.device})"
        assert torch.isfinite(logits).all()

    def test_parallel_layout(self, toy_folders, parallel_results, parallel_case):
        import torch

        from bridge_core.testing.compare import compare_hf_weights

        toy_name = parallel_case.rsplit("-", 1)[0]
        toy, folder, result = self.toys[toy_name], toy_folders[toy_name], parallel_results[parallel_case]
        assert result["error"] is None, result["error"]
        problems = compare_hf_weights(folder, result["hf"])
        assert problems == [], f"roundtrip differs: {problems[:5]}"
        ids = torch.load(Path(result["logits"]).parent.parent / f"{toy_name}-ids.pt", weights_only=True)
        if _logits_comparable(toy):
            assert_logits_match(torch.load(result["logits"], weights_only=True), folder, ids, toy.dtype)

    @pytest.mark.gpu
    def test_parallel_layout_gpu(self, toy_folders, gpu_parallel_results, gpu_case):
        toy_name = gpu_case.rsplit("-", 1)[0]
        self._check_gpu_launch(toy_name, toy_folders[toy_name], gpu_parallel_results[gpu_case])

    @pytest.mark.gpu
    def test_one_gpu_launch(self, toy_folders, one_gpu_results):
        for case, result in one_gpu_results.items():
            toy_name = case.rsplit("-", 1)[0]
            self._check_gpu_launch(toy_name, toy_folders[toy_name], result)

    def _check_gpu_launch(self, toy_name: str, folder: Path, result: dict) -> None:
        import torch

        from bridge_core.testing.compare import compare_hf_weights

        toy = self.toys[toy_name]
        assert result["error"] is None, result["error"]
        problems = compare_hf_weights(folder, result["hf"])
        assert problems == [], f"{toy_name}: roundtrip differs: {problems[:5]}"
        ids = torch.load(Path(result["logits"]).parent.parent / f"{toy_name}-ids.pt", weights_only=True)
        logits = torch.load(result["logits"], weights_only=True, map_location="cpu")
        if _logits_comparable(toy):
            assert_logits_match(logits, folder, ids, toy.dtype, gpu=True)


def _logits_comparable(toy: ToyModel) -> bool:
    """False for a bf16 MoE toy: its top-k routing flips at bf16 near-ties under another layout (measured
    0.37-0.47 on the Mixtral and Qwen2-MoE bf16 toys, the size of a mapping error), so a parallel layout
    checks its bit-exact roundtrip only; its fp32 model is compared in process."""
    return toy.dtype == "float32" or "moe" not in toy.tags


def assert_logits_match(logits: Any, folder: Path, ids: Any, dtype: str, *, gpu: bool = False) -> None:
    """``logits`` of a model in ``dtype`` match transformers' fp32 forward of the same checkpoint."""
    import torch

    from bridge_core.testing.compare import max_abs_diff

    diff = max_abs_diff(logits, hf_logits(folder, ids, dtype=torch.float32))
    if dtype != "float32":
        tolerance = BF16_TOLERANCE
    else:
        tolerance = GPU_FP32_TOLERANCE if gpu else FP32_TOLERANCE
    assert diff <= tolerance, f"max |logits diff| {diff:.3g} > {tolerance} ({dtype} model)"


def _save_ids(toy: ToyModel, path: Path, seq: int) -> None:
    import torch

    torch.save(sample_ids(toy.config["vocab_size"], seq=seq), path)
