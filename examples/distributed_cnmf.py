"""Coupled NMF concepts fitted on several processes, GPUs or machines with ``torch.distributed``.

Run on one machine with two CPU processes (gloo):

    torchrun --nproc_per_node=2 examples/distributed_cnmf.py

On 8 GPUs (NCCL is picked when CUDA is available):

    torchrun --nproc_per_node=8 examples/distributed_cnmf.py

On two machines with 8 GPUs each (run on both, ``--node_rank`` 0 and 1):

    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 \\
        --rdzv_backend=c10d --rdzv_endpoint=HOST_OF_NODE_0:29500 examples/distributed_cnmf.py

``python examples/distributed_cnmf.py`` runs the same code in one process.

Each rank reads its own contiguous shard of the data, collects the activations
of its own examples, and the factor updates all-reduce the sufficient
statistics: the concepts are those of a single-process fit on all the examples
(rank 0's first, then rank 1's, ...). A loader with a ``DistributedSampler``
works too, but that sampler repeats up to ``world_size - 1`` examples to give
every rank the same count, and interleaves the examples over the ranks.
"""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset, TensorDataset

from captum_concepts.concept import CoupledNMFConcepts
from captum_concepts.data import DigitsCNN, load_digits_tensors, pretrained_digits_cnn
from captum_concepts.distributed import gather_columns, get_rank, get_world_size, shard_range


def main() -> None:
    launched = "RANK" in os.environ  # set by torchrun
    use_cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if launched:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world = get_rank(), get_world_size()

    # Every rank needs the same model: rank 0 trains it, the others receive its weights.
    model = pretrained_digits_cnn(seed=0).model if rank == 0 else DigitsCNN()
    model = model.to(device).eval()
    if world > 1:
        for tensor in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(tensor.data, src=0)

    data = load_digits_tensors()
    dataset = TensorDataset(data.x_train, data.y_train)
    shard = Subset(dataset, shard_range(len(dataset)))  # this rank's examples, in order
    loader = DataLoader(shard, batch_size=256)

    start = time.perf_counter()
    cnmf = CoupledNMFConcepts(
        n_concepts=10,
        model=model,
        layers=["block2.pool", "block3.pool", "embedding_relu"],
        solver="hals",
        max_iter=100,
        random_state=0,
        distributed=True,
    ).fit(loader, has_labels=True)  # batches are (images, labels): the labels stay out of the model
    seconds = time.perf_counter() - start

    # example_factors_ holds this rank's columns of F; pixel and neuron factors are global.
    F = gather_columns(cnmf.example_factors_)  # (10, N), the dataset's order
    if rank == 0:
        print(f"{world} rank(s), {F.shape[1]} examples, {cnmf.n_iter_} iterations in {seconds:.2f} s")
        print(f"objective: {cnmf.loss_history_[0]:.1f} -> {cnmf.loss_history_[-1]:.1f}")
        cnmf.example_factors_ = F  # the analyses below need every example
        top = cnmf.top_classes(data.y_train, k=2)
        for c in range(top.shape[0]):
            print(f"concept {c}: top classes {top[c].tolist()}")
    if launched:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
