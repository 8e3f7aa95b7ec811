"""Device mesh, shardings, and host batches -> global arrays (pure data parallelism).

One mesh axis, "data", spans every device of every process. Params, EMA and optimizer state
are replicated (38.5 M float32 params plus two Adam moments and the EMA are ~0.6 GB, far below
any accelerator's memory, so FSDP would only add communication). Batches are split along their
leading axis. `jax.jit` then inserts the gradient all-reduce itself: no pmap, no pmean.
"""

from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def create_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh named "data" over all devices (or the given ones, e.g. one device in tests).

    The axis is `Auto`: the partitioner propagates the batch sharding through the model and
    diffusion code, which therefore needs no sharding annotations of its own (with `Explicit`
    axes some reshapes inside the U-Net would need an `out_sharding`).
    """
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), (AxisType.Auto,), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of params, EMA, optimizer state and metrics: a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of batches: the leading (batch) axis split over the "data" axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def global_batch_size_ok(batch_size: int, mesh: Mesh) -> None:
    """Raises a clear error unless the global batch splits evenly over processes and devices."""
    n_dev, n_proc = mesh.size, jax.process_count()
    if batch_size % n_dev or batch_size % n_proc:
        raise ValueError(
            f"config.batch_size={batch_size} must be divisible by the number of devices "
            f"({n_dev}) and of processes ({n_proc})."
        )


def to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host-local batch -> global arrays sharded along the batch axis.

    Every process passes its own `global_batch // process_count` rows; the result has the
    global batch size. Non-numeric entries (the `id` byte strings of eval batches) stay on host
    and are dropped here, because they cannot live on a device.

    Args:
      batch: dict of host-local NumPy arrays with a common leading dimension b.
      mesh: the mesh from `create_mesh`.

    Returns:
      dict of `jax.Array` with leading dimension b · process_count, sharded over "data".
    """
    sharding = data_sharding(mesh)
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if value.dtype.kind in "SUO":  # strings / bytes / objects
            continue
        out[key] = jax.make_array_from_process_local_data(sharding, value)
    return out
