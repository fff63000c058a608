"""An experiment against forgetting: fine-tune with the face ResNet pulled back towards its pretrained weights.

After every training step each weight of the face ResNet moves a share ``rate`` of the
way back to where it started (the pretrained weights):

    w <- w - rate * (w - w_pretrained)

a decoupled form of L2-SP (Li, Grandvalet, Davoine 2018). The run is an ordinary facetrip
run otherwise (``train.weight_interpolation`` still applies at the end); it is evaluated
on its test people, and can be scored on LFW with ``scripts/bench_lfw.py --run OUT``.
Measured on Yale B in docs/quality.md#extended-yale-b: no better than a smaller
``--weight-interpolation``, so not offered as an option.

Usage::

    python scripts/pull_to_pretrained.py --data folder:../shared/data/yaleb/images --split 0 \\
        --epochs 10 --rate 0.02 -o runs/yaleb_pull_split0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def pull_callback(rate: float):
    """A Keras callback that moves the face ResNet's weights ``rate`` of the way back to their start after every batch."""
    import keras
    import tensorflow as tf

    class PullToPretrained(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            variables = list(self.model.embedder.get_layer("face_resnet").trainable_variables)
            starts = [tf.constant(variable.numpy()) for variable in variables]

            @tf.function
            def pull():
                for variable, start in zip(variables, starts):
                    variable.assign_sub(rate * (variable - start))

            self._pull = pull

        def on_train_batch_end(self, batch, logs=None):
            self._pull()

    return PullToPretrained()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="data source, e.g. folder:../shared/data/yaleb/images")
    parser.add_argument("--split", type=int, default=0, help="split.seed")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rate", type=float, default=0.02, help="share of the way back to the pretrained weights per step")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the new run directory")
    args = parser.parse_args(argv)

    from benchmarking import train_and_evaluate_run

    train_and_evaluate_run(args.data, args.split, args.epochs, args.output, callbacks=[pull_callback(args.rate)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
