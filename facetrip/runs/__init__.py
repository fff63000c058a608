"""The run directory: what a training run saves, how (atomically), and how it is loaded and checked.

    layout.py      the file names, the metadata format, RunError, new and latest runs
    files.py       atomic writes (temporary file, fsync, rename)
    lock.py        the lock that keeps two processes from training into one run
    metadata.py    metadata.json, every field checked before it is used
    model_file.py  model.keras, checked (bounded, no foreign code) before Keras loads it
    output_folder.py  what a command may write into: its own output folder (a record of its files), one file

Importing this package does not import TensorFlow or Keras.
"""

from facetrip.runs.files import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    fsync_directory,
    fsync_file,
    save_model_atomically,
    write_all_atomically,
    write_atomically,
    write_atomically_as,
)
from facetrip.runs.layout import (
    BACKUP_DIR,
    CONFIG_FILE,
    DEFAULT_RUNS_ROOT,
    EVALUATION_FILE,
    LOCK_FILE,
    LOGS_DIR,
    METADATA_FILE,
    METADATA_FORMAT,
    METRICS_FILE,
    MODEL_FILE,
    REPLAY_FILE,
    ROC_PLOT_FILE,
    SPLIT_FILE,
    RunError,
    latest_run,
    new_run_dir,
)
from facetrip.runs.lock import run_lock
from facetrip.runs.metadata import LARGEST_DISTANCE, check_metadata_fields, read_metadata
from facetrip.runs.model_file import (
    MODEL_FILE_LIMIT,
    MODEL_MEMBER_LIMITS,
    WEIGHTS_DATA_LIMIT,
    check_model_archive,
    check_model_config,
    check_model_weights,
    load_embedding_model,
)
from facetrip.runs.output_folder import (
    OUTPUT_RECORD,
    CommandOutput,
    OutputFolder,
    OutputFolderError,
    check_output_file,
    check_output_folder,
)

__all__ = [
    "BACKUP_DIR",
    "CONFIG_FILE",
    "DEFAULT_RUNS_ROOT",
    "EVALUATION_FILE",
    "LARGEST_DISTANCE",
    "LOCK_FILE",
    "LOGS_DIR",
    "METADATA_FILE",
    "METADATA_FORMAT",
    "METRICS_FILE",
    "MODEL_FILE",
    "MODEL_FILE_LIMIT",
    "MODEL_MEMBER_LIMITS",
    "OUTPUT_RECORD",
    "CommandOutput",
    "OutputFolder",
    "OutputFolderError",
    "REPLAY_FILE",
    "ROC_PLOT_FILE",
    "RunError",
    "SPLIT_FILE",
    "WEIGHTS_DATA_LIMIT",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_metadata_fields",
    "check_model_archive",
    "check_model_config",
    "check_model_weights",
    "check_output_file",
    "check_output_folder",
    "fsync_directory",
    "fsync_file",
    "latest_run",
    "load_embedding_model",
    "new_run_dir",
    "read_metadata",
    "run_lock",
    "save_model_atomically",
    "write_all_atomically",
    "write_atomically",
    "write_atomically_as",
]
