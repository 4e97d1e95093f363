"""What a training function needs to run unchanged on one process or on several (data parallel).

Under ``accelerate launch`` (see :mod:`launch`) every process runs the same training function; they
differ only in ``accelerator.process_index``:

- every process draws the same batches (the samplers' and the batch order's seeds do not depend on
  the process) and trains on its rows ``index::count`` of each (:func:`shard`), so the union of the
  processes' batches of one step is the batch a single process trains on; DDP averages the gradients;
- dropout and the diffusion noise draw from per-process seeds (:func:`process_seed`; process 0 keeps
  the YAML's seed, so one process trains exactly as before);
- :class:`AcceleratorProcesses` lets :func:`training.fit` give every process process 0's epoch record
  (one selection, one stopping decision) and gather every process's RNG into process 0's checkpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    from accelerate import Accelerator

T = TypeVar("T")


def data_parallel_accelerator(device: str, bf16: bool = False) -> Accelerator:
    """An ``Accelerator`` on CUDA or the CPU (gloo between processes there).

    ``find_unused_parameters``: a step trains one direction (LGCD) or reads no h^rev ('w/o diffusion'),
    so some trainable weights get no gradient in it, which plain DDP refuses.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    cuda = device.startswith("cuda")
    return Accelerator(cpu=not cuda, mixed_precision="bf16" if bf16 and cuda else "no",
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def process_device(accelerator: Accelerator, device: str) -> str:
    """The YAML's device in one process (``cuda:1`` included); the launcher's device of this process in several."""
    return device if accelerator.num_processes == 1 else str(accelerator.device)


def process_seed(seed: int, index: int) -> int:
    """The seed of process ``index``'s own random draws: ``seed`` itself for process 0, a derived one for the others."""
    return seed if index == 0 else int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def shard(rows: T, index: int, count: int) -> T:
    """Process ``index``'s rows of a batch: every ``count``-th, from the ``index``-th."""
    return rows[index::count]


class AcceleratorProcesses:
    """The :class:`training.Processes` of an accelerate launch (``torch.distributed`` object collectives)."""

    def __init__(self, accelerator: Accelerator) -> None:
        self.index, self.count = accelerator.process_index, accelerator.num_processes

    def agree(self, value: T) -> T:
        """Process 0's ``value``, on every process."""
        if self.count == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: T) -> list[T]:
        """Every process's ``value`` in rank order, on every process; no process returns before all have sent."""
        if self.count == 1:
            return [value]
        import torch.distributed as dist

        out: list = [None] * self.count
        dist.all_gather_object(out, value)
        return out


def mean_of(records: list[dict]) -> dict:
    """Leaf-wise mean of nested dicts of numbers with the same keys (the processes' epoch stats)."""
    return {k: mean_of([r[k] for r in records]) if isinstance(v, dict) else float(np.mean([r[k] for r in records]))
            for k, v in records[0].items()}
