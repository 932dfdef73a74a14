"""Training on several processes (hosts) at once: JAX's multi-controller runtime.

Every process runs the same program on its own devices; together they form one mesh. Each reads only its share of
every batch (`process_shard`), the arrays are assembled from the processes' shares, and only the main process
writes the run's files (run.json, metrics, plots, weights); checkpoints are written by orbax from all of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

ADDRESS_VARIABLE = "JAX_COORDINATOR_ADDRESS"  # read by jax.distributed.initialize itself
NUM_PROCESSES_VARIABLE = "JAX_NUM_PROCESSES"
PROCESS_ID_VARIABLE = "JAX_PROCESS_ID"
HEARTBEAT_VARIABLE = "FLAXEN_HEARTBEAT_TIMEOUT"  # seconds without a heartbeat before a process counts as dead


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool = False,
    heartbeat_timeout_seconds: int | None = None,
) -> bool:
    """Join a multi-process run; True if this process is now one of several.

    Explicit arguments win, then the environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).
    With `auto` and nothing given, JAX detects the cluster itself (Cloud TPU, SLURM, Open MPI, Kubernetes...).
    Nothing given and no `auto`: a single-process run, nothing to do.

    When a process dies, the others stop once it has missed heartbeats for `heartbeat_timeout_seconds`
    (default: FLAXEN_HEARTBEAT_TIMEOUT, else JAX's 100): JAX's coordination service ends them with a message
    naming the dead process. Restart all of them with --resume.
    """
    coordinator = coordinator or os.environ.get(ADDRESS_VARIABLE)
    num_processes = num_processes if num_processes is not None else _int_variable(NUM_PROCESSES_VARIABLE)
    process_id = process_id if process_id is not None else _int_variable(PROCESS_ID_VARIABLE)
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    if not auto and all(value is None for value in given.values()):
        return False
    if not auto:
        missing = [name.replace("_", "-") for name, value in given.items() if value is None]
        if missing:
            raise ValueError(
                f"a multi-process run needs --coordinator, --num-processes and --process-id; missing "
                f"{', '.join('--' + name for name in missing)} (or --cluster on a cluster JAX detects)"
            )
        if num_processes < 1:
            raise ValueError(f"--num-processes must be at least 1, got {num_processes}")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"--process-id must be from 0 to {num_processes - 1}, got {process_id}")
    if heartbeat_timeout_seconds is None:
        heartbeat_timeout_seconds = _int_variable(HEARTBEAT_VARIABLE) or 100
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        heartbeat_timeout_seconds=heartbeat_timeout_seconds,
    )
    return jax.process_count() > 1


def _int_variable(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"the environment variable {name} must be a whole number, got {value!r}") from None


def is_main_process() -> bool:
    """True in the process that writes the run's files (the only one in a single-process run)."""
    return jax.process_index() == 0


def process_shard() -> tuple[int, int]:
    """(this process's index, number of processes): which share of each batch this process reads."""
    return jax.process_index(), jax.process_count()


def global_batch(host_batch: dict[str, np.ndarray], sharding: jax.sharding.NamedSharding) -> dict[str, jax.Array]:
    """The batch as arrays over the whole mesh, each process giving its own rows."""
    if jax.process_count() == 1:
        return jax.device_put(host_batch, sharding)
    return {name: jax.make_array_from_process_local_data(sharding, value) for name, value in host_batch.items()}


def place(tree: Any, shardings: Any) -> Any:
    """`tree` as arrays with `shardings`: arrays already spread over the processes are resharded, others (the same
    values in every process, e.g. a freshly built model's state) are cut up where they are."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def one(value, sharding):
        if isinstance(value, jax.Array) and not value.is_fully_addressable:
            return value if value.sharding == sharding else jax.jit(lambda x: x, out_shardings=sharding)(value)
        host = np.asarray(value)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree, shardings)


def fully_on_host(tree: Any) -> Any:
    """`tree`'s arrays as numpy, gathered from the other processes where they span several (then all must call)."""

    def one(value):
        if isinstance(value, jax.Array) and not value.is_fully_addressable:
            return multihost_utils.process_allgather(value, tiled=True)
        return np.asarray(jax.device_get(value))

    return jax.tree.map(one, tree)


def agree(seconds: dict[str, float]) -> dict[str, float]:
    """Process 0's `seconds` in every process (timings each process measured for itself, so that every process
    plans the same run from them). Every process must pass the same names."""
    if jax.process_count() == 1:
        return seconds
    values = multihost_utils.broadcast_one_to_all(np.asarray(list(seconds.values()), dtype=np.float32))
    return {name: float(value) for name, value in zip(seconds, values)}


def from_main_process(make: Callable[[], str]) -> str:
    """`make()` run in process 0 only, its text given to every process (e.g. a tokenizer, whose training may break
    ties differently in each process).

    If `make()` raises, process 0 re-raises it and every other process raises a ValueError with its message,
    instead of waiting in the broadcast until the heartbeat timeout."""
    if jax.process_count() == 1:
        return make()
    failure, text = None, ""
    if is_main_process():
        try:
            text = make()
        except Exception as error:
            failure, text = error, str(error)
    data = np.frombuffer(text.encode(), np.uint8)
    header = np.asarray([len(data), failure is not None], np.int32)
    length, failed = (int(value) for value in multihost_utils.broadcast_one_to_all(header))
    buffer = np.zeros(length, np.uint8)
    buffer[: len(data)] = data
    text = bytes(multihost_utils.broadcast_one_to_all(buffer)).decode()
    if failure is not None:
        raise failure
    if failed:
        raise ValueError(f"process 0 failed: {text}")
    return text


def barrier(name: str) -> None:
    """Wait until every process has reached the barrier `name` (a no-op in a single-process run)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
