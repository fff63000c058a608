"""Run in a subprocess by test_distribute.py: MirroredStrategy on 2 logical CPUs against one device.

The CPU must be split before TensorFlow sets up its devices, hence a process of its own.
Prints one JSON object: for each case, the largest parameter difference after several
optimizer steps between the mirrored run and a single-device run on the same global
batches, and whether every logged value was finite.
"""

import json
import sys

import numpy as np
import tensorflow as tf

REPLICAS = 2
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * REPLICAS)

import keras  # noqa: E402

from facetrip.losses import TripletLoss, triplet_metrics  # noqa: E402
from facetrip.training.distribute import fit_distributed  # noqa: E402
from facetrip.training.embedding_trainer import EmbeddingTrainer  # noqa: E402

IDENTITIES, FEATURES, STEPS = 8, 6, 4


def embedder():
    inputs = keras.Input((FEATURES,))
    hidden = keras.layers.Dense(8, activation="tanh")(inputs)
    outputs = keras.layers.UnitNormalization()(keras.layers.Dense(4)(hidden))
    return keras.Model(inputs, outputs)


def trainer(strategy_name, margin, mining_scope, warmup, memory_size=0, memory_warmup_steps=0):
    model = EmbeddingTrainer(embedder(), np.arange(IDENTITIES), TripletLoss(strategy=strategy_name, margin=margin),
                             statistics=triplet_metrics(margin=margin), warmup_epochs=1 if warmup else 0,
                             classification_weight=0.5, mining_scope=mining_scope, memory_size=memory_size,
                             memory_warmup_steps=memory_warmup_steps)
    model.compile(optimizer=keras.optimizers.SGD(0.2, momentum=0.5))
    model.optimizer.build(model.trainable_variables)
    model.set_epoch(0)
    return model


def pk_batches(rng, shapes):
    """Global batches: P=4 identities x K=4 images (or the sizes of ``shapes``), labels ordered by identity."""
    batches = []
    for size in shapes:
        people = rng.choice(IDENTITIES, size=4, replace=False)
        labels = np.repeat(people, 4)[:size] if size <= 16 else rng.integers(0, IDENTITIES, size)
        batches.append((rng.normal(size=(size, FEATURES)).astype(np.float32), labels.astype(np.int64)))
    return batches


def case(strategy_name, margin="0.2", mining_scope="global", warmup=False, shapes=(16,) * STEPS, special=None,
         keras_fit=False, memory_size=0, memory_warmup_steps=0):
    margin = margin if margin == "soft" else float(margin)
    rng = np.random.default_rng(7)
    batches = pk_batches(rng, shapes)
    if special == "singletons":  # replica 0's rows are 8 different people: no positive pair there
        labels = np.concatenate([np.arange(8), np.repeat(np.arange(4), 2)]).astype(np.int64)
        batches = [(images, labels) for images, _ in batches]

    keras.utils.set_random_seed(0)
    single = trainer(strategy_name, margin, mining_scope, warmup, memory_size, memory_warmup_steps)
    initial = single.get_weights()
    step = tf.function(single.train_step)
    single_logs = [step((tf.constant(images), tf.constant(labels))) for images, labels in batches]

    strategy = tf.distribute.MirroredStrategy([f"/cpu:{index}" for index in range(REPLICAS)],
                                              cross_device_ops=tf.distribute.ReductionToOneDevice())
    with strategy.scope():
        mirrored = trainer(strategy_name, margin, mining_scope, warmup, memory_size, memory_warmup_steps)
        mirrored.set_weights(initial)
        dataset = tf.data.Dataset.from_generator(
            lambda: iter(batches), output_signature=(tf.TensorSpec((None, FEATURES), tf.float32),
                                                     tf.TensorSpec((None,), tf.int64)))
        if keras_fit:  # Keras' own fit runs EmbeddingTrainer.train_step under the strategy
            history = mirrored.fit(dataset, epochs=1, steps_per_epoch=len(batches), verbose=0, shuffle=False).history
        else:
            history = fit_distributed(strategy, mirrored, dataset, 0, 1, len(batches))
    difference = max(float(np.max(np.abs(a - b))) for a, b in zip(
        [v.numpy() for v in single.trainable_variables], [v.numpy() for v in mirrored.trainable_variables]))
    # the single device's last logs are its trackers' means over the epoch, as the mirrored epoch logs
    log_difference = max(abs(history[name][0] - float(value)) for name, value in single_logs[-1].items())
    memory = {}
    if memory_size:  # every replica's copy of the memory against the single device's
        single_memory = [v.numpy() for v in single.cross_batch_memory.weights]
        copies = [[np.asarray(local) for local in strategy.experimental_local_results(v.value)]
                  for v in mirrored.cross_batch_memory.weights]
        memory = {"max_memory_difference": max(float(np.max(np.abs(np.asarray(copy, np.float64) - theirs)))
                                               for mine, theirs in zip(copies, single_memory) for copy in mine),
                  "rows_pushed": int(single.cross_batch_memory.pushed.numpy())}
    return {**memory, "max_parameter_difference": difference, "max_log_difference": log_difference,
            "finite": bool(np.all(np.isfinite([value for values in history.values() for value in values]))),
            "loss": history["loss"][0]}


def split_sizes(sizes=(16, 15, 1)):
    """Rows per replica of each global batch after experimental_distribute_dataset."""
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{index}" for index in range(REPLICAS)],
                                              cross_device_ops=tf.distribute.ReductionToOneDevice())
    dataset = tf.data.Dataset.from_generator(lambda: (tf.range(size) + 100 * index for index, size in enumerate(sizes)),
                                             output_signature=tf.TensorSpec((None,), tf.int32))
    return [[local.numpy().tolist() for local in strategy.experimental_local_results(batch)]
            for batch in strategy.experimental_distribute_dataset(dataset)]


CASES = {
    "batch_all": dict(strategy_name="batch_all"),
    "batch_hard": dict(strategy_name="batch_hard"),
    "semi_hard": dict(strategy_name="semi_hard"),
    "batch_all_soft": dict(strategy_name="batch_all", margin="soft"),
    "batch_hard_soft": dict(strategy_name="batch_hard", margin="soft"),
    "semi_hard_soft": dict(strategy_name="semi_hard", margin="soft"),
    "classification_only": dict(strategy_name="batch_hard", warmup=True),
    "uneven_batches": dict(strategy_name="batch_all", shapes=(16, 15, 9, 1)),
    "no_positive_pair_on_a_replica": dict(strategy_name="batch_hard", special="singletons"),
    "keras_fit_semi_hard": dict(strategy_name="semi_hard", keras_fit=True),
    "replica_scope_batch_hard": dict(strategy_name="batch_hard", mining_scope="replica"),
    "replica_scope_batch_all": dict(strategy_name="batch_all", mining_scope="replica"),
    # a memory of 24 rows: full after two steps of 16, then overwritten; the last: on after one step
    "memory_batch_all": dict(strategy_name="batch_all", memory_size=24),
    "memory_batch_hard": dict(strategy_name="batch_hard", memory_size=24),
    "memory_semi_hard": dict(strategy_name="semi_hard", memory_size=24),
    "memory_batch_hard_soft": dict(strategy_name="batch_hard", margin="soft", memory_size=24),
    "memory_uneven_batches": dict(strategy_name="batch_hard", shapes=(16, 15, 9, 1), memory_size=24),
    "memory_keras_fit_semi_hard": dict(strategy_name="semi_hard", keras_fit=True, memory_size=24),
    "memory_warmup_batch_all": dict(strategy_name="batch_all", memory_size=40, memory_warmup_steps=1),
    "memory_replica_scope_batch_hard": dict(strategy_name="batch_hard", mining_scope="replica", memory_size=24),
}

if __name__ == "__main__":
    names = sys.argv[1:] or [*CASES, "split"]
    print(json.dumps({name: split_sizes() if name == "split" else case(**CASES[name]) for name in names}))
