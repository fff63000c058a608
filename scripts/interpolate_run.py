"""A finished face-network run at another weight interpolation, without training again (WiSE-FT).

``train.weight_interpolation`` = a saves ``(1 - a) * pretrained + a * fine-tuned`` weights.
Every point of that line can be had from any one run on it: with the run's share ``a0``,

    w(a) = w_pretrained + (a / a0) * (w(a0) - w_pretrained),

or, from a run saved below share 1, from the fine-tuned end it keeps (``fine_tuned_weights.npz``,
facetrip.runs.fine_tuned_end; the only way from a run saved at share 0), as
``w(a) = w_pretrained + a * (w_fine_tuned - w_pretrained)``. This script writes a copy of RUN at share ``a``: the same config, split and training
logs, the model's weights moved along the line, the threshold calibrated again on the
run's own calibration identities (as ``train`` does), and ``weight_interpolation`` in its
metadata. Evaluate the copy with ``facetrip evaluate OUT`` or ``scripts/bench_lfw.py --run OUT``.

Usage::

    python scripts/interpolate_run.py runs/yaleb_split0 0.3 -o runs/yaleb_split0_a0.3
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def pretrained_weights(config) -> list:
    """The weights a run of ``config`` starts fine-tuning from: its network as built, with test-time augmentation."""
    import keras

    from facetrip.models import build_embedding_model
    from facetrip.models.tta import with_test_time_augmentation

    keras.utils.set_random_seed(config.train.seed)
    model = build_embedding_model(
        input_shape=(*config.data.image_size, config.data.channels), embedding_dim=config.model.embedding_dim,
        backbone=config.model.backbone, width=config.model.width, dropout=config.model.dropout,
        head=config.model.head, freeze=config.model.freeze,
    )
    if config.model.flip_tta or config.model.tta_shift > 0:
        model = with_test_time_augmentation(model, config.model.flip_tta, config.model.tta_shift)
    return model.get_weights()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run of a pretrained backbone")
    parser.add_argument("share", type=float, help="the new train.weight_interpolation, from 0 to 1")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the new run directory (must not exist)")
    parser.add_argument("--data-dir", default=None, help="tfds data folder of the run's source")
    args = parser.parse_args(argv)

    import numpy as np

    from facetrip.config import Config
    from facetrip.data import IdentitySplit, load_faces
    from facetrip.data.model_input import prepare_faces
    from facetrip.models import PRETRAINED_BACKBONES, resolve_backbone
    from facetrip.runs import (CONFIG_FILE, METADATA_FILE, MODEL_FILE, SPLIT_FILE, atomic_write_json,
                               load_embedding_model, read_metadata, save_model_atomically)
    from facetrip.evaluation.threshold import calibrate_threshold
    from facetrip.runs.fine_tuned_end import FINE_TUNED_WEIGHTS_FILE, load_fine_tuned_weights
    from facetrip.runs.fine_tuned_end import METADATA_KEY as FINE_TUNED_KEY

    if not 0.0 <= args.share <= 1.0:
        parser.error(f"share must lie in [0, 1], not {args.share}")
    if args.output.exists():
        parser.error(f"{args.output} exists: give a new folder")
    metadata = read_metadata(args.run)
    config = Config.from_toml(args.run / CONFIG_FILE)
    if resolve_backbone(config.model.backbone) not in PRETRAINED_BACKBONES or not config.train.epochs:
        parser.error(f"{args.run} is not a fine-tuned run of a pretrained backbone")
    share_before = float(metadata.get("weight_interpolation", 1.0))
    kept = metadata.get(FINE_TUNED_KEY)
    if share_before == 0.0 and kept is None:
        parser.error(f"{args.run} holds the pretrained weights only (weight_interpolation 0) and keeps no "
                     f"{FINE_TUNED_WEIGHTS_FILE}: nothing to move along")

    model = load_embedding_model(args.run)
    start = pretrained_weights(config)
    if kept is not None:  # the far end itself: w(a) = w_pretrained + a * (w_fine_tuned - w_pretrained)
        try:
            far_end, ratio = load_fine_tuned_weights(args.run, kept, model.get_weights()), args.share
        except ValueError as error:
            parser.error(str(error))
    else:  # w(a) = w_pretrained + (a / a0) * (w(a0) - w_pretrained)
        far_end, ratio = model.get_weights(), args.share / share_before
    moved = [(s + ratio * (np.asarray(w, np.float64) - s)).astype(w.dtype) if np.issubdtype(w.dtype, np.floating) else w
             for s, w in ((np.asarray(s, np.float64), w) for s, w in zip(start, far_end))]
    model.set_weights(moved)

    shutil.copytree(args.run, args.output, ignore=shutil.ignore_patterns(MODEL_FILE, "metrics*.json", "roc*.png", ".*"))
    save_model_atomically(model, args.output / MODEL_FILE)
    config.set("train.weight_interpolation", args.share)
    (args.output / CONFIG_FILE).write_text(config.to_toml())
    faces, _ = prepare_faces(load_faces(config.data.source, data_dir=args.data_dir), config.data.face_chips)
    split = IdentitySplit.load(args.output / SPLIT_FILE)
    calibration = calibrate_threshold(model, faces, split, config, metadata["metric"], weights_trained=args.share > 0)
    stale = ("threshold", "threshold_source", "calibration", "calibration_different_distances", "dev", "train",
             "dev_and_train")
    updated = {key: value for key, value in metadata.items() if key not in stale}
    atomic_write_json(args.output / METADATA_FILE, {**updated, "weight_interpolation": args.share, **calibration})
    print(json.dumps({"run": str(args.output), "weight_interpolation": args.share,
                      "threshold": calibration.get("threshold")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
