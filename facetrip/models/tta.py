"""Test-time augmentation inside the saved model: an image and its mirrored / shifted copies, embedded and averaged.

:func:`with_test_time_augmentation` wraps a trained embedder for export: the embeddings
of an image, of copies shifted by a pixel up, down, left and right, and (with flips) of
their mirror images are summed and renormalised, inside the saved model, so every command
that loads a run gets the same embedding. :func:`with_flip_averaging` is the mirror only.
"""

from __future__ import annotations

import keras
from keras import layers


@keras.saving.register_keras_serializable(package="facetrip")
class HorizontalFlip(layers.Layer):
    """Mirror images left-right: (B, H, W, C) -> (B, H, W, C), always (not a random augmentation)."""

    def call(self, images):
        return keras.ops.flip(images, axis=2)


@keras.saving.register_keras_serializable(package="facetrip")
class Shift(layers.Layer):
    """Translate images by whole pixels: out[y, x] = in[y + dy, x + dx], the border mirrored.

    (B, H, W, C) -> (B, H, W, C), always the same shift (not a random augmentation). Pixels
    shifted in from outside the image repeat the border symmetrically (``c b a | a b c``).

    Args:
        dy, dx: rows and columns to shift by (a positive dx shows content from the right).
    """

    def __init__(self, dy: int = 0, dx: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.dy, self.dx = int(dy), int(dx)

    def call(self, images):
        pad = max(abs(self.dy), abs(self.dx))
        if pad == 0:
            return images
        height, width = images.shape[1], images.shape[2]
        padded = keras.ops.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="symmetric")  # (B, H+2p, W+2p, C)
        return padded[:, pad + self.dy : pad + self.dy + height, pad + self.dx : pad + self.dx + width, :]

    def get_config(self):
        return {**super().get_config(), "dy": self.dy, "dx": self.dx}


def tta_offsets(shift: int) -> list[tuple[int, int]]:
    """The (dy, dx) views of shift test-time augmentation: the image, then +-shift vertically and horizontally."""
    if shift < 0:
        raise ValueError(f"The test-time shift must be 0 or more pixels, not {shift}.")
    return [(0, 0)] + ([(-shift, 0), (shift, 0), (0, -shift), (0, shift)] if shift else [])


def with_test_time_augmentation(embedder: keras.Model, flip: bool = True, shift: int = 1,
                                name: str = "facetrip_embedder_tta") -> keras.Model:
    """``normalise(sum over views v of f(v(x)))``: the embedder with test-time augmentation.

    The views are the image and its copies shifted by ``shift`` pixels up, down, left and
    right (:func:`tta_offsets`; just the image when ``shift`` is 0), each also mirrored when
    ``flip``: 10 views by default, 1 with neither.

    Args:
        embedder: a model from images to unit embeddings (shares its weights with the result).
        flip: add the mirror image of every view.
        shift: pixels of the shifted views, 0 for none.
        name: model name.

    Returns:
        keras.Model with the same input and output shapes as ``embedder``.
    """
    images = keras.Input(shape=embedder.input_shape[1:], name="image")
    views = [images if (dy, dx) == (0, 0) else Shift(dy, dx, name=f"shift_{dy}_{dx}".replace("-", "m"))(images)
             for dy, dx in tta_offsets(shift)]
    if flip:
        views += [HorizontalFlip(name="mirror" if index == 0 else f"mirror_{index}")(view) for index, view in enumerate(views)]
    embeddings = [embedder(view) for view in views]  # each (B, D)
    summed = embeddings[0] if len(embeddings) == 1 else layers.Add(dtype="float32", name="sum_views")(embeddings)
    return keras.Model(images, layers.UnitNormalization(dtype="float32", name="l2_normalise_views")(summed), name=name)


def with_flip_averaging(embedder: keras.Model, name: str = "facetrip_embedder_flip_tta") -> keras.Model:
    """``normalise(f(x) + f(mirror(x)))``: the embedder with flip test-time augmentation.

    Args:
        embedder: a model from images to unit embeddings (shares its weights with the result).
        name: model name.

    Returns:
        keras.Model with the same input and output shapes as ``embedder``.
    """
    return with_test_time_augmentation(embedder, flip=True, shift=0, name=name)
