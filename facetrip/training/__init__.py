"""Training a run: ``train(config, run_dir)`` and what the CLI needs around it.

    run.py               the plan of a run: check, data, model, fit, calibrate
    run_dir.py           which folders may be trained into, --overwrite
    checkpoints.py       resume checkpoints in backup/, written whole and committed
    resume.py            the config and split a resumed run continues with
    embedding_trainer.py the model fit trains: embedder + cosine classifier of the identities
    distribute.py        tf.distribute strategies (mirrored, multi-worker) and their training loop
    callbacks.py         the Keras callbacks of a run (imports Keras; loaded when a run starts)
    optimizer.py         optimizer and learning-rate schedule
    offline.py           the offline-mining epoch loop
    history.py           metrics.csv and training_curves.png

Importing this package does not import TensorFlow or Keras.
"""

from facetrip.training.checkpoints import find_resume_point
from facetrip.training.errors import TrainingDiverged, TrainingError
from facetrip.training.resume import load_resume_config
from facetrip.training.run import train, training_augmentation
from facetrip.training.run_dir import check_new_run_dir, is_facetrip_run, prepare_run_dir

__all__ = [
    "TrainingDiverged",
    "TrainingError",
    "check_new_run_dir",
    "find_resume_point",
    "is_facetrip_run",
    "load_resume_config",
    "prepare_run_dir",
    "train",
    "training_augmentation",
]
