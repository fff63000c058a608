"""LFW through facetrip with a variant of the chip: aligned on dlib's 68 landmarks instead of 5, or turned grey.

A measurement, not a product option: the script runs ``scripts/bench_lfw.py`` with one
step of facetrip's path changed, so that the variant's accuracy sits beside the default's.

- ``68-landmarks``: the chip is cut by ``dlib.get_face_chip`` from the 68 points of
  ``shape_predictor_68_face_landmarks.dat`` (same wheel) instead of the 5 points. Its chips
  are cached apart, under an alignment version of their own.
- ``grey``: every chip is turned grey (ITU-R 601 luma, copied to the 3 channels) just
  before the network: does a network fine-tuned on grey photos lose LFW through colour?

The variant applies in the worker processes that align photos too (they import this
script and read ``FACETRIP_LFW_VARIANT``).

Usage::

    python scripts/bench_lfw_alignment.py --variant 68-landmarks --run RUN --pairs pairs.txt
    python scripts/bench_lfw_alignment.py --variant grey --run RUN --pairs pairs.txt
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANT_ENV = "FACETRIP_LFW_VARIANT"
VARIANTS = ("68-landmarks", "grey")


def use_68_landmarks() -> None:
    """Cut every chip from dlib's 68 landmarks from now on, cached under an alignment version of its own."""
    import facetrip.data.chip_cutting as chip_cutting

    @functools.cache
    def landmarks_68():
        dlib, face_recognition_models = chip_cutting.import_dlib("Face chips need")
        return dlib, dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())

    chip_cutting._landmark_model = landmarks_68
    chip_cutting.ALIGNMENT_VERSION = chip_cutting.ALIGNMENT_VERSION + "_68pt"


def use_grey_chips() -> None:
    """Turn every image grey (3 equal channels) as it is decoded for the network."""
    import facetrip.data.pipeline as pipeline

    decode = pipeline.preprocess_encoded

    def grey(encoded, image_size, channels):
        import tensorflow as tf

        image = decode(encoded, image_size, channels)  # (H, W, 3) in [0, 1]
        return tf.repeat(tf.image.rgb_to_grayscale(image), 3, axis=-1)

    pipeline.preprocess_encoded = grey


def apply_variant(variant: str | None) -> None:
    if variant == "68-landmarks":
        use_68_landmarks()
    elif variant == "grey":
        use_grey_chips()


apply_variant(os.environ.get(VARIANT_ENV))  # also in the spawned alignment workers, which import this script


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument("--variant", choices=VARIANTS, required=True)
    args, rest = parser.parse_known_args(argv)
    if os.environ.get(VARIANT_ENV) != args.variant:
        os.environ[VARIANT_ENV] = args.variant
        apply_variant(args.variant)
    import bench_lfw

    return bench_lfw.main(rest)


if __name__ == "__main__":
    sys.exit(main())
