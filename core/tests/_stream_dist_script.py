"""Streaming import against the live one, in one torchrun launch of 2 CPU processes.

``python -m torch.distributed.run --nproc_per_node 2 _stream_dist_script.py CASES.json``. For each
case ``{"name", "hf", "tp", "pp", "ep", "live", "stream"}`` both ranks import the HF folder twice:
through the model at that layout (the two ranks are its ranks) and streamed, with no model (the two
ranks are workers). A case that raises writes ``<stream>.error-rank<r>.txt``.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).parent


def main(spec: str) -> None:
    import torch.distributed as dist

    from bridge_core.conversion.stream_import import stream_import
    from bridge_core.conversion.workflows import import_checkpoint
    from bridge_core.runtime.parallel import destroy_model_parallel, ensure_process_group
    from bridge_core.runtime.parallelism import Parallelism
    from bridge_core.testing.dist_runner import use_plugin

    ensure_process_group()
    use_plugin({"module": "_test_bridges", "path": str(HERE)})
    for case in json.loads(Path(spec).read_text()):
        parallel = Parallelism(tp=case.get("tp", 1), pp=case.get("pp", 1), ep=case.get("ep", 1))
        try:
            import_checkpoint(case["hf"], case["live"], parallel)
            destroy_model_parallel()
            stream_import(case["hf"], case["stream"], parallel)
        except Exception:
            Path(f"{case['stream']}.error-rank{dist.get_rank()}.txt").write_text(traceback.format_exc())
        destroy_model_parallel()
        dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
