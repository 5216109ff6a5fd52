"""Run a saved model under real tensor parallelism on CPU: ``world_size`` processes, gloo, transformers' own sharding
(``from_pretrained(..., distributed_config=DistributedConfig(tp_size=N))``)."""

import importlib
import os
import socket

import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world_size, port, class_path, model_dir, input_ids, out_dir):
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    from transformers.distributed.configuration_utils import DistributedConfig

    module, name = class_path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    model = cls.from_pretrained(model_dir, distributed_config=DistributedConfig(tp_size=world_size)).eval()
    with torch.no_grad():
        logits = model(input_ids).logits
    # which parameters ended up sharded (a DTensor with a Shard placement), by name
    sharded = sorted(
        n
        for n, p in model.named_parameters()
        if any(type(pl).__name__ == "Shard" for pl in getattr(p, "placements", ()))
    )
    torch.save({"logits": logits, "sharded": sharded}, os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def run_sharded(class_path, model_dir, input_ids, out_dir, world_size=2, timeout=240):
    """Forward ``input_ids`` through ``class_path.from_pretrained(model_dir)`` sharded over ``world_size`` CPU ranks.

    Returns each rank's ``{"logits", "sharded"}``; raises if a rank fails or hangs.
    """
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [
        ctx.Process(target=_worker, args=(r, world_size, port, class_path, str(model_dir), input_ids, str(out_dir)))
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    for p in procs:
        if p.is_alive():
            p.kill()
    codes = [p.exitcode for p in procs]
    if codes != [0] * world_size:
        raise RuntimeError(f"tensor-parallel ranks exited with {codes} (see captured stderr)")
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(world_size)]
