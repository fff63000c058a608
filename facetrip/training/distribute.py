"""Training on several devices with tf.distribute: the strategy of ``train.distribute`` and its training loop.

- ``mirrored``: every local GPU (or ``train.replicas`` of them); on a machine without GPUs
  the CPU is split into ``train.replicas`` logical devices, for trying it out and tests.
- ``multi-worker``: the cluster of ``TF_CONFIG``, one process per worker; only the chief
  writes the run directory.

Each global step is one P x K batch, split along the batch axis across the replicas by
``experimental_distribute_dataset``; the trainer mines over the global batch
(:meth:`~facetrip.training.embedding_trainer.EmbeddingTrainer.replica_step`). The loop
is written here (``strategy.run`` and the optimizer's own gradient all-reduce) rather
than Keras' ``fit``, whose reductions of per-replica logs fail under
MultiWorkerMirroredStrategy; it drives the same Keras callbacks as ``fit``.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from facetrip.training.errors import TrainingError

DISTRIBUTE_CHOICES = ("none", "mirrored", "multi-worker")

# A cluster of a thousand workers takes some 30 kB of TF_CONFIG.
_TF_CONFIG_SIZE_LIMIT = 1 << 20


def check_distribution(distribute: str, replicas: int, mining_scope: str) -> None:
    """Refuse an unknown ``train.distribute`` or ``train.mining_scope`` in one line, before any data is loaded.

    Raises:
        TrainingError: naming the choices.
    """
    from facetrip.training.embedding_trainer import MINING_SCOPES

    if distribute not in DISTRIBUTE_CHOICES:
        raise TrainingError(f"train.distribute must be one of {', '.join(DISTRIBUTE_CHOICES)}, not {distribute!r}.")
    if mining_scope not in MINING_SCOPES:
        raise TrainingError(f"train.mining_scope must be one of {', '.join(MINING_SCOPES)}, not {mining_scope!r}.")
    if distribute == "none" and replicas > 1:
        raise TrainingError(f"train.replicas = {replicas} needs train.distribute = mirrored (--distribute mirrored).")
    if distribute == "multi-worker":
        if replicas:
            raise TrainingError("train.replicas is for train.distribute = mirrored: a multi-worker cluster uses "
                                "every worker's devices.")
        cluster_task()  # a missing or malformed TF_CONFIG fails here


def cluster_task() -> tuple[dict, str, int]:
    """The cluster, task type and task index of ``TF_CONFIG``, every part of it checked.

    ``TF_CONFIG`` is read like a file facetrip did not write: within a size and a nesting
    depth, and its shape checked before anything uses it: ``cluster`` maps each task type to
    a list of ``"host:port"`` texts, and ``task`` names one of those types and an index
    within its list.

    Raises:
        TrainingError: TF_CONFIG is missing, too large, not JSON, or not of that shape (one line).
    """
    from facetrip.untrusted_files import UntrustedFileError, parse_json_text

    text = os.environ.get("TF_CONFIG", "")
    if not text:
        raise TrainingError("--distribute multi-worker needs TF_CONFIG, the cluster as JSON (see docs/distributed.md).")
    shape = ('TF_CONFIG must be JSON like {"cluster": {"worker": ["host:port", ...]}, '
             '"task": {"type": "worker", "index": 0}}')
    if len(text) > _TF_CONFIG_SIZE_LIMIT:
        raise TrainingError(f"TF_CONFIG is longer than {_TF_CONFIG_SIZE_LIMIT:,} characters: {shape}.")
    try:
        described = parse_json_text(text, "TF_CONFIG")
    except UntrustedFileError as error:
        raise TrainingError(f"{error}: {shape}.") from None
    cluster = described.get("cluster") if isinstance(described, dict) else None
    task = described.get("task") if isinstance(described, dict) else None
    if not isinstance(cluster, dict) or not cluster or not all(
            isinstance(name, str) and isinstance(addresses, list) and addresses
            and all(isinstance(address, str) for address in addresses) for name, addresses in cluster.items()):
        raise TrainingError(f"TF_CONFIG's cluster must map task types to lists of \"host:port\": {shape}.")
    if not isinstance(task, dict) or not isinstance(task.get("type"), str) or task["type"] not in cluster:
        raise TrainingError(f"TF_CONFIG's task must name a type of its cluster ({', '.join(sorted(cluster))}): {shape}.")
    index = task.get("index")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
        raise TrainingError(f"TF_CONFIG's task index must be a whole number from 0 to "
                            f"{len(cluster[task['type']]) - 1} for its {len(cluster[task['type']])} "
                            f"{task['type']} task(s): {shape}.")
    return cluster, task["type"], index


def is_chief(distribute: str) -> bool:
    """Whether this process writes the run directory: always, except a multi-worker worker that is not the chief.

    The chief is task ``chief`` where the cluster has one, else worker 0.
    """
    if distribute != "multi-worker":
        return True
    cluster, task_type, index = cluster_task()
    return task_type == "chief" or (task_type == "worker" and index == 0 and "chief" not in cluster)


def split_cpu(count: int) -> None:
    """Split the first CPU into ``count`` logical devices, before TensorFlow initialises its devices.

    Raises:
        TrainingError: TensorFlow already initialised them (something ran an op first).
    """
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:
        if len(tf.config.list_logical_devices("CPU")) != count:
            raise TrainingError(f"Cannot split the CPU into {count} devices: TensorFlow already set up its devices "
                                "in this process.") from None


def create_strategy(distribute: str, replicas: int = 0):
    """The ``tf.distribute`` strategy of ``train.distribute``, or None for ``none``.

    Args:
        distribute: ``none``, ``mirrored`` or ``multi-worker``.
        replicas: mirrored only: the number of GPUs (0 = all); without GPUs, the number of
            logical CPU devices (0 = 1).

    Raises:
        TrainingError: more replicas asked for than there are GPUs; no usable TF_CONFIG.
    """
    if distribute == "none":
        return None
    import tensorflow as tf

    if distribute == "multi-worker":
        cluster_task()
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        count = replicas or len(gpus)
        if count > len(gpus):
            raise TrainingError(f"--replicas {count} asks for more GPUs than the {len(gpus)} this machine has.")
        return tf.distribute.MirroredStrategy([f"/gpu:{index}" for index in range(count)])
    count = max(replicas, 1)
    if count > 1:
        split_cpu(count)
    # NCCL is for GPUs; on CPU devices the sums go through one device
    return tf.distribute.MirroredStrategy([f"/cpu:{index}" for index in range(count)],
                                          cross_device_ops=tf.distribute.ReductionToOneDevice())


def distribute_dataset(strategy, dataset):
    """``dataset`` of global batches, each split along the batch axis across the replicas.

    Every worker builds the same seeded batches and keeps its replicas' rows (DATA
    sharding), so a global step is one P x K batch whatever the number of workers.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(dataset.with_options(options))


def replica_step_function(strategy, trainer):
    """The compiled global step: ``strategy.run(trainer.replica_step)`` on one distributed batch, logs of replica 0."""
    import tensorflow as tf

    @tf.function
    def step(batch):
        images, labels = batch[0], batch[1]
        logs = strategy.run(trainer.replica_step, args=(images, labels))
        return {name: strategy.experimental_local_results(value)[0] for name, value in logs.items()}

    return step


def fit_distributed(strategy, trainer, dataset, initial_epoch: int, epochs: int, steps_per_epoch: int,
                    callbacks: Sequence[Any] = ()) -> dict[str, list[float]]:
    """Train ``trainer`` from ``initial_epoch`` to ``epochs`` under ``strategy``, calling Keras callbacks as ``fit`` does.

    Batch logs are the global batch's values; epoch logs their means over the epoch's
    steps (as ``fit``'s running means). A callback's ``model.stop_training`` ends training
    after the current step on every worker alike (all workers see the same logs).

    Args:
        strategy: the strategy the trainer was built under (``strategy.scope()``).
        trainer: the compiled :class:`~facetrip.training.embedding_trainer.EmbeddingTrainer`, optimizer built.
        dataset: global P x K batches ``(images, labels)``, ``steps_per_epoch`` per epoch.
        initial_epoch: the first epoch to train (0-based).
        epochs: train until this many epochs are done.
        steps_per_epoch: global steps per epoch.
        callbacks: Keras callbacks.

    Returns:
        The epoch logs, name -> one value per epoch trained.
    """
    import keras
    import numpy as np

    step = replica_step_function(strategy, trainer)
    callback_list = keras.callbacks.CallbackList(list(callbacks), add_history=True, add_progbar=False, model=trainer,
                                                 verbose=0, epochs=epochs, steps=steps_per_epoch)
    trainer.stop_training = False
    batches = iter(distribute_dataset(strategy, dataset))
    history: dict[str, list[float]] = {}
    callback_list.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        callback_list.on_epoch_begin(epoch)
        totals: dict[str, float] = {}
        steps_done = 0
        for batch_index in range(steps_per_epoch):
            callback_list.on_train_batch_begin(batch_index)
            logs = {name: float(np.asarray(value)) for name, value in step(next(batches)).items()}
            steps_done += 1
            totals = {name: totals.get(name, 0.0) + value for name, value in logs.items()}
            callback_list.on_train_batch_end(batch_index, logs)
            if trainer.stop_training:
                break
        epoch_logs = {name: total / max(steps_done, 1) for name, total in totals.items()}
        callback_list.on_epoch_end(epoch, epoch_logs)
        for name, value in epoch_logs.items():
            history.setdefault(name, []).append(value)
        if trainer.stop_training:
            break
    callback_list.on_train_end()
    return history


def finish_workers(strategy) -> None:
    """A last collective every worker joins, so that none exits while a peer still talks to it ("Socket closed")."""
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return

    def replica_barrier():
        # tf.identity: a constant has no device to all-reduce from ("destinations can not be empty")
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(1.0))

    tf.function(lambda: strategy.run(replica_barrier))()
