"""Device meshes and shardings for data-parallel and FSDP training, on jax.sharding and XLA's SPMD partitioner.

A mesh has two axes. Each batch is split by rows over all its devices (`data` × `fsdp`). Along `fsdp`, the
parameters and the optimizer state are split too (fully sharded data parallel): XLA gathers a weight where a layer
needs it and scatters its gradient back, so each device holds 1/fsdp of the training state. `data` replicas hold
whole copies and only average gradients. The same code runs everywhere:

    mesh = flaxen.train.make_mesh()                # all devices on `data` (one CPU: a 1-device mesh)
    mesh = flaxen.train.make_mesh(data=2, fsdp=4)  # 8 devices: 2 FSDP groups of 4
    Trainer(model, optimizer, out_dir, mesh=mesh).fit(data, steps)

To try several devices on one CPU, set `XLA_FLAGS=--xla_force_host_platform_device_count=8` before jax is imported.
On a multi-GPU/TPU host nothing changes. Across several hosts, start the same command on every host; after
`flaxen.distributed.initialize` (before anything else touches jax) `make_mesh` spans all hosts' devices, each
process reads only its rows of every batch (`flaxen.distributed`), and orbax writes each host's shards into one
shared run folder.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """The FSDP rule table, the same for every model.

    An array with at least `min_ndim` dimensions and `min_size` elements is split over the fsdp axis along its
    largest dimension that the axis size divides (the first of equals); every other array (biases, norm scales,
    small matrices, counters) is replicated.
    """

    min_ndim: int = 2
    min_size: int = 2**14


def make_mesh(data: int = -1, fsdp: int = 1, *, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (`data`, `fsdp`) mesh over `devices` (default: all); -1 for one axis gives it the devices the other leaves."""
    devices = list(jax.devices() if devices is None else devices)
    count = len(devices)
    if (data, fsdp).count(-1) > 1 or any(size == 0 or size < -1 for size in (data, fsdp)):
        raise ValueError(f"mesh axis sizes must be positive, or -1 for one of them; got data={data}, fsdp={fsdp}")
    if -1 in (data, fsdp):
        axis, size = (FSDP_AXIS, fsdp) if data == -1 else (DATA_AXIS, data)
        if count % size:
            raise ValueError(
                f"{axis}={size} does not divide the {count} available devices; choose a divisor of {count}"
            )
        data, fsdp = (count // fsdp, fsdp) if data == -1 else (data, count // data)
    elif data * fsdp != count:
        raise ValueError(
            f"a data={data} × fsdp={fsdp} mesh needs {data * fsdp} devices but {count} are available; "
            f"choose sizes whose product is {count}, or -1 for one of them"
        )
    # Auto axes: XLA's SPMD partitioner places the collectives, so model code needs no sharding annotations.
    return jax.make_mesh((data, fsdp), (DATA_AXIS, FSDP_AXIS), axis_types=(AxisType.Auto,) * 2, devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows of every batch array split over all devices of the mesh (both axes), other dimensions whole."""
    return NamedSharding(mesh, PartitionSpec((DATA_AXIS, FSDP_AXIS)))


def replicated(mesh: Mesh) -> NamedSharding:
    """A whole copy on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """Raise ValueError unless `batch_size` rows split evenly over the mesh's devices."""
    if batch_size % mesh.size:
        raise ValueError(
            f"batch size {batch_size} does not split evenly over the {mesh.size} devices of the mesh "
            f"(data={mesh.shape[DATA_AXIS]} × fsdp={mesh.shape[FSDP_AXIS]}); use a multiple of {mesh.size}"
        )


def parameter_sharding(state: Any, mesh: Mesh, rules: ShardingRules = ShardingRules()) -> Any:
    """The NamedSharding of every array in `state` by `rules`, as a tree of the same structure.

    It depends only on each array's shape, so an optimizer state's moments get exactly their parameters'
    shardings and its scalars are replicated: one call for the parameters, one for the optimizer state.
    """
    return jax.tree.map(lambda leaf: NamedSharding(mesh, _partition_spec(np.shape(leaf), mesh, rules)), state)


def _partition_spec(shape: tuple[int, ...], mesh: Mesh, rules: ShardingRules) -> PartitionSpec:
    fsdp_size = mesh.shape[FSDP_AXIS]
    if fsdp_size == 1 or len(shape) < rules.min_ndim or math.prod(shape) < rules.min_size:
        return PartitionSpec()
    divisible = [dim for dim in range(len(shape)) if shape[dim] % fsdp_size == 0]
    if not divisible:
        return PartitionSpec()
    split = max(divisible, key=lambda dim: (shape[dim], -dim))
    return PartitionSpec(*(FSDP_AXIS if dim == split else None for dim in range(len(shape))))
