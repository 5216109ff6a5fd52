"""Stream a tensor plan into a GGUF file: header and tensor table first, then one tensor at a time.

Peak memory is about the largest tensor (plus its converted copy): gguf-py's GGUFWriter is fed tensor *infos* up
front (`add_tensor_info`) and each tensor's bytes only when its turn comes (`write_tensor_data`). The caller
(`pipeline`) passes a temporary path and renames it into place once every output is complete.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
from tqdm import tqdm

from ..formats.folder import Checkpoint
from .plan import PlannedTensor, materialize


def write_gguf(
    path: Path,
    arch: str,
    plan: list[PlannedTensor],
    add_metadata: Callable[[gguf.GGUFWriter], None],
    ckpt: Checkpoint,
    progress: bool = True,
    desc: str | None = None,
) -> None:
    """Write `plan` to `path`. `add_metadata` adds the KV pairs once the tensor infos are known."""
    writer = gguf.GGUFWriter(path=None, arch=arch)
    for item in plan:
        # the dtype argument is ignored when raw_dtype is given; shapes are torch order (the writer reverses them)
        writer.add_tensor_info(item.name, item.shape, np.dtype(np.float32), item.nbytes, raw_dtype=item.qtype)
    add_metadata(writer)
    try:
        writer.write_header_to_file(path=path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        cache: dict = {}
        with tqdm(
            total=sum(p.nbytes for p in plan),
            unit="B",
            unit_scale=True,
            desc=desc or path.name,
            disable=not progress,
            leave=False,
        ) as bar:
            for item in plan:
                writer.write_tensor_data(materialize(ckpt, item, cache))
                bar.update(item.nbytes)
        writer.flush()
    finally:
        writer.close()
