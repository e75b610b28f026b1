"""Devices and processes of a training run: data parallel on one or many devices, one or many processes.

One `Cluster` describes where a run trains and who writes files:

* TensorFlow backend: one process; `devices > 1` is a `tf.distribute.MirroredStrategy` over local GPUs
  (or logical CPU devices, see `use_cpu_devices`). Multi-worker TensorFlow (`TF_CONFIG`) is refused: Keras 3's
  `fit` fails under `MultiWorkerMirroredStrategy` (keras-team/keras#20585).
* JAX backend: `keras.distribution.DataParallel` over the devices of every process. Several processes (on one
  host or many) join through `jax.distributed` at a coordinator address; each process feeds its own slice of
  every global batch (the input pipeline shards by `num_shards` / `shard_index`), XLA all-reduces the
  gradients, and BatchNorm statistics are those of the global batch.

Process 0 is the only writer (checkpoints, history, plots, config, exports); every process restores the
state it wrote (`broadcast_from_writer`).

Example:
    >>> cluster = setup_cluster()          # one process, the default device
    >>> cluster.num_processes, cluster.is_writer
    (1, True)
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from ghostface_keras.core.errors import GhostFaceError

logger = logging.getLogger(__name__)

DEFAULT_INIT_TIMEOUT_S = 300
# Class-sharded heads (`setup_cluster(shard_classes=True)`): the mesh axis their class centers are split over, and
# the variable paths that are split (the training head `norm_dense`'s kernel; optimizer slots follow it).
CLASS_AXIS = "model"
CLASS_CENTERS_PATH = r"(.*/)?norm_dense/kernel"
# A process whose peers stop answering (killed, crashed, host lost) is stopped after this many seconds.
DEFAULT_HEARTBEAT_TIMEOUT_S = 60


class DistributionError(GhostFaceError):
    """A training cluster could not be set up as asked (devices, processes, coordinator, backend)."""


class LostProcessError(GhostFaceError):
    """A multi-process run lost one of its processes (killed, crashed, unreachable) while training."""


def backend() -> str:
    """The Keras backend name, without importing Keras' heavier parts twice."""
    import keras

    return keras.backend.backend()


def use_cpu_devices(count: int) -> None:
    """Split the CPU into `count` logical devices, for testing data parallel on a machine without GPUs.

    Must run before the backend initializes its devices (before any model is built or op is run).

    Example:
        >>> use_cpu_devices(1)
    """
    if count < 1:
        raise DistributionError(f"--cpu-devices must be >= 1, got {count}")
    name = backend()
    try:
        if name == "jax":
            import jax

            jax.config.update("jax_num_cpu_devices", int(count))
        else:
            import tensorflow as tf

            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError as error:  # devices were already initialized
        current = _local_device_count(name)
        if current != count:
            raise DistributionError(f"cannot split the CPU into {count} devices after start-up ({current} now): "
                                    f"call use_cpu_devices first") from error


def _local_device_count(name: str) -> int:
    if name == "jax":
        import jax

        return jax.local_device_count()
    import tensorflow as tf

    return len(tf.config.list_logical_devices("CPU"))


@dataclass
class Cluster:
    """Where one training process runs: its rank, the data-parallel devices, and how to enter them.

    Attributes:
        backend: the Keras backend ("tensorflow", "jax", "torch").
        num_processes, process_id: the processes of the run and this one's rank (0 = coordinator, writer).
        num_devices: data-parallel replicas over all processes (the global batch is split over them).
        strategy: the `tf.distribute.Strategy` (TensorFlow backend), else None.
        distribution: the `keras.distribution.Distribution` (JAX backend, several devices), else None.
        class_shards: devices the class centers are split over (`shard_classes`; 1 = a replicated head).
    """

    backend: str
    num_processes: int = 1
    process_id: int = 0
    num_devices: int = 1
    strategy: Any = None
    distribution: Any = None
    devices: list = field(default_factory=list)
    class_shards: int = 1

    @property
    def is_writer(self) -> bool:
        """Process 0 writes every file of a run; the others only train."""
        return self.process_id == 0

    @property
    def shard(self) -> dict:
        """Keyword arguments for the dataset builders: this process's slice of every global batch."""
        return {"num_shards": self.num_processes, "shard_index": self.process_id}

    def scope(self):
        """Context in which models, heads and optimizers are built (the strategy's scope on TensorFlow)."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def check_batch_size(self, global_batch: int) -> None:
        """The global batch must split evenly over the devices of all processes."""
        if global_batch % self.num_devices:
            raise DistributionError(f"--batch-size {global_batch} is the global batch: it must be divisible by the "
                                    f"{self.num_devices} devices of the run")


def setup_cluster(
    devices: int | None = None,
    coordinator: str | None = None,
    num_processes: int = 1,
    process_id: int = 0,
    init_timeout: float = DEFAULT_INIT_TIMEOUT_S,
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT_S,
    shard_classes: bool = False,
) -> Cluster:
    """Join the processes of a run (JAX) and choose its data-parallel devices.

    Args:
        devices: local devices per process (default: every local accelerator on JAX, one device on
            TensorFlow, where several mean `MirroredStrategy`).
        coordinator: `HOST:PORT` of process 0, for several processes (JAX backend only).
        num_processes, process_id: the number of processes and this one's rank.
        init_timeout: seconds to wait for every process to join before giving up.
        heartbeat_timeout: seconds after which a process whose peers went silent stops with an error.
        shard_classes: split the class centers of the head over every device of the run (JAX): a
            `keras.distribution.ModelParallel` over a (batch 1, model N) `DeviceMesh`, the batch split over the N
            devices and the head's kernel (`CLASS_CENTERS_PATH`) by class (`ghostface_keras.train.sharded`).

    Run it before building any model. It checks every argument first and raises `DistributionError` with
    one line on bad input (`process_id` out of range, processes without a coordinator, JAX missing,
    a coordinator that does not answer within `init_timeout`).

    Example:
        >>> setup_cluster(num_processes=2, process_id=0)
        Traceback (most recent call last):
        ...
        ghostface_keras.core.distribution.DistributionError: --num-processes 2 needs --coordinator HOST:PORT (the address of process 0)
    """
    _check_arguments(devices, coordinator, num_processes, process_id)
    if os.environ.get("TF_CONFIG"):
        raise DistributionError(
            "TF_CONFIG is set, but multi-worker TensorFlow training is not supported (Keras 3's fit fails under "
            "MultiWorkerMirroredStrategy, keras-team/keras#20585): unset it and use KERAS_BACKEND=jax with "
            "--coordinator HOST:PORT --num-processes N --process-id I")
    name = backend()
    if shard_classes and name != "jax":
        raise DistributionError(f"shard_classes splits the class centers over devices on the JAX backend, not {name}: "
                                "set KERAS_BACKEND=jax", fields=("shard_classes",))
    if num_processes > 1 and name != "jax":
        if not _jax_installed():
            raise DistributionError("several processes train on the JAX backend, and jax is not installed: "
                                    "pip install 'ghostface_keras[jax]', then set KERAS_BACKEND=jax")
        raise DistributionError(f"several processes train on the JAX backend (this is {name}): set KERAS_BACKEND=jax")
    if name == "jax":
        return _jax_cluster(devices, coordinator, num_processes, process_id, init_timeout, heartbeat_timeout,
                            shard_classes)
    if name == "tensorflow":
        return _tensorflow_cluster(devices)
    if devices not in (None, 1):
        raise DistributionError(f"--devices {devices}: data parallel runs on the JAX or TensorFlow backend, not {name}")
    return Cluster(name)


def _check_arguments(devices, coordinator, num_processes, process_id) -> None:
    if num_processes < 1:
        raise DistributionError(f"--num-processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise DistributionError(f"--process-id {process_id} is out of range for --num-processes {num_processes} "
                                f"(0..{num_processes - 1})")
    if num_processes > 1 and not coordinator:
        raise DistributionError(f"--num-processes {num_processes} needs --coordinator HOST:PORT (the address of "
                                "process 0)")
    if coordinator:
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise DistributionError(f"--coordinator {coordinator!r} is not HOST:PORT")
    if devices is not None and devices < 1:
        raise DistributionError(f"--devices must be >= 1, got {devices}")


def _jax_installed() -> bool:
    try:
        import jax  # noqa: F401
    except ImportError:
        return False
    return True


def _jax_cluster(devices, coordinator, num_processes, process_id, init_timeout, heartbeat_timeout,
                 shard_classes=False) -> Cluster:
    import jax
    import keras

    if coordinator and num_processes > 1:
        # CPU collectives between processes go through gloo (GPUs use NCCL whatever this says).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        logger.info("process %d of %d: joining the coordinator %s", process_id, num_processes, coordinator)
        # JAX aborts the whole process (no exception) when peers do not show up in time: meet them first.
        rendezvous(coordinator, num_processes, process_id, init_timeout)
        try:
            jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                       process_id=process_id, initialization_timeout=max(1, int(init_timeout)),
                                       heartbeat_timeout_seconds=max(1, int(heartbeat_timeout)))
        except Exception as error:  # noqa: BLE001 - jax raises XlaRuntimeError / RuntimeError variants
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DistributionError(f"process {process_id}: could not join the coordinator {coordinator} within "
                                    f"{init_timeout:.0f} s: {first_line[:300]}") from error
    local = jax.local_devices()
    count = len(local) if devices is None else devices
    if count > len(local):
        raise DistributionError(f"--devices {count} asked, but this process sees {len(local)} {local[0].platform} "
                                f"device(s) (on a CPU-only machine, --cpu-devices N splits the CPU for testing)")
    chosen = set(d.id for d in local[:count])
    mesh_devices = [d for d in jax.devices() if d.process_index != jax.process_index() or d.id in chosen]
    if len({sum(1 for d in mesh_devices if d.process_index == p) for p in range(jax.process_count())}) != 1:
        raise DistributionError("every process must use the same number of devices")
    distribution = None
    if shard_classes and len(mesh_devices) > 1:
        distribution = class_sharded_distribution(mesh_devices)
        keras.distribution.set_distribution(distribution)
    elif len(mesh_devices) > 1:
        # The input pipeline shards by process itself (each process decodes only its own images).
        distribution = keras.distribution.DataParallel(devices=mesh_devices, auto_shard_dataset=False)
        keras.distribution.set_distribution(distribution)
    return Cluster("jax", jax.process_count(), jax.process_index(), len(mesh_devices), None, distribution,
                   mesh_devices, class_shards=len(mesh_devices) if shard_classes else 1)


def class_sharded_distribution(devices: list):
    """`keras.distribution.ModelParallel` for a class-sharded head over `devices` (JAX devices of every process).

    The mesh has a "batch" axis of 1 and a "model" axis of N: each device holds a slice of every batch (the data
    layout splits the batch over the "model" axis: the backbone stays data parallel on all N devices) and a
    slice of the classes (the head kernel's class axis on "model", arcface_torch's layout). Every other
    variable is replicated. The input pipeline shards by process itself, as with `DataParallel`.
    """
    import keras

    mesh = keras.distribution.DeviceMesh((1, len(devices)), ("batch", CLASS_AXIS), devices=devices)
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map[CLASS_CENTERS_PATH] = (None, CLASS_AXIS)
    return keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name=CLASS_AXIS,
                                            auto_shard_dataset=False)


def rendezvous(coordinator: str, num_processes: int, process_id: int, timeout: float) -> None:
    """Meet every process of a run at `coordinator` (process 0 listens there) before JAX joins them.

    Each other process connects, says its process count and rank, and waits for process 0's "go", which
    comes once all ranks 1..N-1 have checked in, each once. Any problem (nobody listening, missing or
    duplicate ranks, another process count, the port taken) is a `DistributionError` of one line after at
    most `timeout` seconds. Process 0 lets the port go before JAX's coordination service binds it.
    """
    import socket
    import time

    host, _, port = coordinator.rpartition(":")
    deadline = time.monotonic() + timeout
    hello = f"ghostface {num_processes}"
    if process_id == 0:
        _gather_peers(host.strip("[]"), int(port), num_processes, hello, deadline, coordinator, timeout)
        return
    while True:
        try:
            connection = socket.create_connection((host.strip("[]"), int(port)), timeout=1.0)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise DistributionError(f"process {process_id}: could not join the coordinator {coordinator} within "
                                        f"{timeout:.0f} s: nothing answers there (is process 0 running?)") from None
            time.sleep(0.3)
    with connection:
        connection.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            connection.sendall(f"{hello} {process_id}\n".encode())
            reply = connection.makefile().readline().strip()
        except OSError:
            reply = ""
    if reply != "go":
        raise DistributionError(f"process {process_id}: could not join the coordinator {coordinator} within "
                                f"{timeout:.0f} s: {reply or 'no answer from process 0'}")


def _gather_peers(host, port, num_processes, hello, deadline, coordinator, timeout) -> None:
    import socket
    import time

    try:
        server = socket.create_server((host, port))
    except OSError:
        try:  # the coordinator's name may not be an address of this machine's interfaces
            server = socket.create_server(("", port))
        except OSError as error:
            raise DistributionError(f"process 0: cannot listen on {coordinator}: {error.strerror}") from None
    peers: dict[int, socket.socket] = {}
    with server:
        while len(peers) < num_processes - 1:
            server.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                connection, _ = server.accept()
                connection.settimeout(max(0.1, deadline - time.monotonic()))
                words = connection.makefile().readline().split()
            except OSError:
                if time.monotonic() < deadline:
                    continue
                for connection in peers.values():
                    connection.close()
                missing = sorted(set(range(1, num_processes)) - set(peers))
                raise DistributionError(f"process 0: process(es) {missing} did not join {coordinator} within "
                                        f"{timeout:.0f} s") from None
            rank = int(words[-1]) if len(words) == 3 and words[-1].isdigit() else -1
            problem = None
            if " ".join(words[:2]) != hello:
                problem = f"this is a run of {num_processes} processes, not {' '.join(words[1:2]) or '?'}"
            elif not 1 <= rank < num_processes or rank in peers:
                problem = f"process id {rank} is taken or out of range"
            if problem:
                connection.sendall(f"{problem}\n".encode())
                connection.close()
                continue
            peers[rank] = connection
    for connection in peers.values():
        with connection:
            connection.sendall(b"go\n")
            connection.recv(1)  # the peer closes first, so the port is free for JAX at once


def _tensorflow_cluster(devices) -> Cluster:
    import tensorflow as tf

    if not devices or devices == 1:
        return Cluster("tensorflow", strategy=tf.distribute.get_strategy())
    gpus = tf.config.list_logical_devices("GPU")
    pool = gpus if gpus else tf.config.list_logical_devices("CPU")
    if len(pool) < devices:
        kind = "GPU" if gpus else "CPU"
        raise DistributionError(f"--devices {devices} asked, but only {len(pool)} {kind} device(s) are visible "
                                f"(on a CPU-only machine, --cpu-devices N splits the CPU for testing)")
    strategy = tf.distribute.MirroredStrategy([d.name for d in pool[:devices]])
    return Cluster("tensorflow", num_devices=devices, strategy=strategy, devices=pool[:devices])


# ----------------------------------------------------------------------------- between processes
def current_cluster() -> Cluster:
    """The cluster this process already runs in (set up by `setup_cluster`, or the plain default).

    Example:
        >>> current_cluster().is_writer
        True
    """
    name = backend()
    if name == "tensorflow":
        import tensorflow as tf

        strategy = tf.distribute.get_strategy()
        return Cluster(name, num_devices=strategy.num_replicas_in_sync, strategy=strategy)
    if name == "jax":
        import jax
        import keras

        distribution = keras.distribution.distribution()
        devices = list(distribution.device_mesh.devices.flatten()) if distribution is not None else []
        shards = 1
        if isinstance(distribution, keras.distribution.ModelParallel) and CLASS_AXIS in distribution.device_mesh.axis_names:
            shards = distribution.device_mesh.shape[distribution.device_mesh.axis_names.index(CLASS_AXIS)]
        return Cluster(name, jax.process_count(), jax.process_index(), max(1, len(devices)), None, distribution,
                       devices, class_shards=shards)
    return Cluster(name)


def is_writer_process() -> bool:
    """True in process 0 of a run (and in any single-process run): the one process that writes files."""
    if backend() != "jax":
        return True
    import jax

    return jax.process_index() == 0


def weights_fingerprint(model) -> str:
    """A short sha256 of a model's weights: equal on every process of a run whose replicas agree.

    Example:
        >>> import keras
        >>> len(weights_fingerprint(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])))
        16
    """
    import hashlib

    digest = hashlib.sha256()
    for variable in model.weights:
        digest.update(to_numpy(variable).tobytes())
    return digest.hexdigest()[:16]


def to_numpy(value):
    """A variable's or array's value as numpy, also for an array spread over several processes (replicated: the
    local copy; sharded, e.g. class centers: gathered from every process, so every process must call it)."""
    import numpy as np

    value = getattr(value, "value", value)
    if hasattr(value, "is_fully_addressable") and not value.is_fully_addressable:
        if not value.sharding.is_fully_replicated:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(value, tiled=True))
        value = value.addressable_data(0)  # replicated: every local copy holds the whole value
    import keras

    return np.asarray(keras.ops.convert_to_numpy(value))


def multi_process() -> bool:
    """True inside a JAX run of several processes."""
    if backend() != "jax":
        return False
    import jax

    return jax.process_count() > 1


def broadcast_from_writer(value: Any) -> Any:
    """Process 0's `value` (a JSON-able object) on every process; the value itself with one process.

    Example:
        >>> broadcast_from_writer({"epoch": 3})
        {'epoch': 3}
    """
    if not multi_process():
        return value
    import json

    import numpy as np
    from jax.experimental import multihost_utils

    payload = np.frombuffer(json.dumps(value).encode(), dtype=np.uint8)
    size = int(multihost_utils.broadcast_one_to_all(np.array(len(payload), np.int64)))
    buffer = np.zeros(size, np.uint8)
    buffer[:min(size, len(payload))] = payload[:size]
    received = np.asarray(multihost_utils.broadcast_one_to_all(buffer)).astype(np.uint8)
    return json.loads(received.tobytes().decode())


def agree_on_writer_check(check: Callable[[], None]) -> None:
    """Run `check()` on process 0 and raise its `GhostFaceError` on every process alike.

    Checks of files only process 0 reads (the output folder, a resumed run's config) must stop every
    process, or the others would wait for process 0 in the next collective step.
    """
    problem = None
    if is_writer_process():
        try:
            check()
        except GhostFaceError as error:
            if not multi_process():
                raise
            problem = [str(error), list(error.fields)]
    problem = broadcast_from_writer(problem)
    if problem is not None:
        message, fields = problem
        raise GhostFaceError(message, fields=tuple(fields))


def broadcast_arrays_from_writer(arrays: dict | None) -> dict | None:
    """Process 0's dict of numpy arrays on every process (e.g. a training state only process 0 can read).

    Process 0 passes its arrays (or None when it has none); the others pass anything: shapes and dtypes
    travel first, then the values. With one process the dict is returned as it is.
    """
    if not multi_process():
        return arrays
    import numpy as np
    from jax.experimental import multihost_utils

    manifest = broadcast_from_writer(
        None if arrays is None else [[key, list(value.shape), value.dtype.str] for key, value in arrays.items()])
    if manifest is None:
        return None
    local = arrays if arrays is not None else {}
    result = {}
    for key, shape, dtype in manifest:
        value = local.get(key)
        if value is None or tuple(value.shape) != tuple(shape):
            value = np.zeros(shape, np.dtype(dtype))
        if np.dtype(dtype).kind in "US":  # strings (JSON metadata) travel as JSON
            result[key] = np.array(broadcast_from_writer(str(value)))
            continue
        result[key] = np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(value, np.dtype(dtype))))
    return result


def sum_over_processes(array):
    """The elementwise sum of a numpy array over all processes (the array itself with one process)."""
    import numpy as np

    if not multi_process():
        return np.asarray(array)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.asarray(array))).sum(axis=0)


def local_predictor(model) -> Callable:
    """`predict(batch) -> numpy`: the model's inference output, computed by this process alone.

    With one process it is the compiled `predict_on_batch`. In a multi-process JAX run a plain
    `predict` would treat each process's batch as a slice of one global batch; this runs the model's
    current weights on the first local device instead (no collectives), so each process can evaluate
    on its own.
    """
    if not multi_process():
        import numpy as np

        return lambda batch: np.asarray(model.predict_on_batch(batch))
    import jax
    import numpy as np

    device = jax.local_devices()[0]

    def local_copy(variable):
        return jax.device_put(to_numpy(variable), device)

    trainable = [local_copy(v) for v in model.trainable_variables]
    non_trainable = [local_copy(v) for v in model.non_trainable_variables]
    forward = jax.jit(lambda t, n, x: model.stateless_call(t, n, x, training=False)[0])
    return lambda batch: np.asarray(forward(trainable, non_trainable, jax.device_put(np.asarray(batch), device)))


__all__ = [
    "Cluster",
    "DistributionError",
    "LostProcessError",
    "CLASS_AXIS",
    "agree_on_writer_check",
    "broadcast_arrays_from_writer",
    "broadcast_from_writer",
    "class_sharded_distribution",
    "current_cluster",
    "is_writer_process",
    "local_predictor",
    "multi_process",
    "setup_cluster",
    "sum_over_processes",
    "to_numpy",
    "weights_fingerprint",
    "use_cpu_devices",
]
