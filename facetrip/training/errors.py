"""The two ways a training run ends early: a config or folder it cannot use, and a diverged loss."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingError(ValueError):
    """A configuration or run directory that cannot be trained: one line saying why."""
