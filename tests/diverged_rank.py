"""Run by tests/test_user_errors.py under `torch.distributed.run --nproc_per_node 2` (gloo, CPU): a two-layer model
sharded by FSDP2 (`fully_shard`), FSDP1 or DeepSpeed ZeRO-3, rank 1's shard of one weight set to NaN, then `kadapt
train`'s divergence check. Each rank writes what it raised to OUT/rank{rank}.txt.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/diverged_rank.py OUT fsdp2|fsdp1|zero3"""

import gc
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist

from peft_kadapt.training.run_image_classification import StopWhenDiverged


ZERO3 = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}


def shard(model: torch.nn.Module, engine: str):
    """The sharded model, and rank 1's local shard of the first weight."""
    if engine == "zero3":
        import deepspeed

        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
        model, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ZERO3)
        return model.module, model.module[0].weight.ds_tensor  # outside forward the parameter itself is empty
    if engine == "fsdp1":  # use_orig_params: each parameter a view of this rank's piece of the flat shard
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrapped = FullyShardedDataParallel(model, device_id=torch.device("cpu"), use_orig_params=True)
        return wrapped, model[0].weight
    from torch.distributed.fsdp import fully_shard

    fully_shard(model)
    return model, model[0].weight.to_local()


def main(out: str, engine: str) -> None:
    if engine == "zero3":
        import deepspeed

        deepspeed.init_distributed("gloo")
    else:
        dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model, local = shard(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2)), engine)
    if rank == 1:
        with torch.no_grad():
            local.fill_(float("nan"))
    args = SimpleNamespace(device=torch.device("cpu"), learning_rate=1.0, output_dir=str(Path(out) / "run"))
    state = SimpleNamespace(global_step=3, max_steps=10, epoch=1.0)
    control = SimpleNamespace(should_log=True, should_evaluate=False, should_save=False)
    try:
        StopWhenDiverged().on_step_end(args, state, control, model=model)
        said = "no error"
    except ValueError as error:
        said = str(error)
    (Path(out) / f"rank{rank}.txt").write_text(said)
    # free what holds the process group while Python runs, so nothing of it is left to the interpreter's exit,
    # where a rare abort was seen ("terminate called without an active exception", in CI and here)
    del model, local
    gc.collect()
    dist.barrier()  # neither rank tears gloo down while the other still uses it
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
