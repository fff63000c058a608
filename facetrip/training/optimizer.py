"""The optimizer and learning-rate schedule of a run (``train.optimizer``, ``train.learning_rate``, warm-up)."""

from __future__ import annotations

from facetrip.config import Config
from facetrip.training.errors import TrainingError


OPTIMIZERS = ("lamb", "adamw")


def build_optimizer(config: Config, steps_per_epoch: int):
    """The optimizer of ``train.optimizer`` on :func:`learning_rate_schedule`, with decoupled weight decay.

    ``lamb`` (You et al., 2020) scales each layer's Adam step by ||w|| / ||step||, so every
    layer changes by about the learning rate *relative to its own size*. The pretrained
    face ResNet needs that: its convolution kernels are small (mean |w| 4e-4 to 1e-2,
    with batch-norm scales of 3 to 14 folded into the layer after them), and AdamW's
    absolute steps of 1e-4 changed them by up to a quarter per step and collapsed every
    embedding onto one point within two epochs on ORL. ``adamw`` suits from-scratch training.
    """
    import keras

    schedule = learning_rate_schedule(config, steps_per_epoch)
    name = config.train.optimizer.lower()
    if name == "lamb":
        return keras.optimizers.Lamb(learning_rate=schedule, weight_decay=config.train.weight_decay or None)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.train.weight_decay)
    raise TrainingError(f"Unknown optimizer {config.train.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}.")


def learning_rate_schedule(config: Config, steps_per_epoch: int):
    """Linear warm-up over ``train.lr_warmup_epochs`` to ``train.learning_rate``, then cosine decay to 1% of it.

    The warm-up protects pretrained weights from the first, largest updates of a freshly
    initialised head and classifier; from-scratch training uses none.
    """
    import keras

    total_steps = max(1, config.train.epochs * steps_per_epoch)
    warmup_steps = min(config.train.lr_warmup_epochs * steps_per_epoch, total_steps - 1)
    if warmup_steps <= 0:
        return keras.optimizers.schedules.CosineDecay(config.train.learning_rate, decay_steps=total_steps, alpha=0.01)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, decay_steps=total_steps - warmup_steps, alpha=0.01,
        warmup_target=config.train.learning_rate, warmup_steps=warmup_steps,
    )
