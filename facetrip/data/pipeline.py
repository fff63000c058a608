"""tf.data pipelines: P x K training batches and plain batches for embedding / evaluation.

Index batches come from :class:`~facetrip.data.sampler.PKSampler` on the host; the
encoded images sit in a TensorFlow lookup table (outside the graph, so large data sets
do not hit the 2 GB graph limit) and are decoded, resized and augmented in parallel by
:func:`~facetrip.data.images.preprocess_encoded`, the same function inference uses.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from facetrip.data.images import preprocess_encoded
from facetrip.data.sampler import PKSampler
from facetrip.data.sources import FaceImages


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Training-time augmentation; every draw is seeded, so the same seed gives the same batches.

    Attributes:
        flip: random horizontal flip.
        max_shift: largest random translation, as a fraction of height and width.
        brightness: largest random brightness change (images are in [0, 1]).
        contrast: random contrast factor in [1 - contrast, 1 + contrast].
        rotation: largest random rotation in degrees (reflected borders).
        erasing: probability of random erasing: a rectangle of 10-50% of the height and
            of the width is replaced by uniform noise (Zhong et al., 2020).
    """

    flip: bool = True
    max_shift: float = 0.08
    brightness: float = 0.1
    contrast: float = 0.2
    rotation: float = 0.0
    erasing: float = 0.0


def _rotate(image, angle):
    """Rotate one (H, W, C) image by ``angle`` radians about its centre, reflecting at the borders."""
    import tensorflow as tf

    height, width = image.shape[0], image.shape[1]
    cos, sin = tf.cos(angle), tf.sin(angle)
    centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
    # maps each output pixel (x, y) to the input pixel it samples
    transform = tf.stack([cos, -sin, centre_x - cos * centre_x + sin * centre_y,
                          sin, cos, centre_y - sin * centre_x - cos * centre_y, 0.0, 0.0])  # (8,)
    rotated = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform[None], output_shape=[height, width], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="REFLECT",
    )  # (1, H, W, C)
    return rotated[0]


def _erase(image, seed, probability: float):
    """With ``probability``, replace a random rectangle of one (H, W, C) image by uniform noise."""
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(seed, num=3)  # (3, 2)
    height, width = image.shape[0], image.shape[1]
    draws = tf.random.stateless_uniform([5], seeds[0])  # apply?, box height, box width, top, left
    box_height = tf.cast((0.1 + 0.4 * draws[1]) * height, tf.int32)
    box_width = tf.cast((0.1 + 0.4 * draws[2]) * width, tf.int32)
    top = tf.cast(draws[3] * tf.cast(height - box_height, tf.float32), tf.int32)
    left = tf.cast(draws[4] * tf.cast(width - box_width, tf.float32), tf.int32)
    rows = tf.range(height)[:, None]  # (H, 1)
    columns = tf.range(width)[None, :]  # (1, W)
    inside = (rows >= top) & (rows < top + box_height) & (columns >= left) & (columns < left + box_width)  # (H, W)
    inside &= draws[0] < probability
    noise = tf.random.stateless_uniform(tf.shape(image), seeds[1])
    return tf.where(inside[:, :, None], noise, image)


def _augment(image, seed, augmentation: Augmentation):
    """Augment one (H, W, C) image in [0, 1] with stateless ops seeded by ``seed`` (2,) int64."""
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(seed, num=6)  # (6, 2)
    height, width, channels = image.shape
    if augmentation.flip:
        image = tf.image.stateless_random_flip_left_right(image, seeds[0])
    if augmentation.max_shift > 0:
        pad_y, pad_x = int(round(height * augmentation.max_shift)), int(round(width * augmentation.max_shift))
        padded = tf.pad(image, [[pad_y, pad_y], [pad_x, pad_x], [0, 0]], mode="SYMMETRIC")
        image = tf.image.stateless_random_crop(padded, [height, width, channels], seeds[1])
    if augmentation.brightness > 0:
        image = tf.image.stateless_random_brightness(image, augmentation.brightness, seeds[2])
    if augmentation.contrast > 0:
        image = tf.image.stateless_random_contrast(image, 1 - augmentation.contrast, 1 + augmentation.contrast, seeds[3])
    if augmentation.rotation > 0:
        limit = augmentation.rotation * np.pi / 180
        image = _rotate(image, tf.random.stateless_uniform([], seeds[4], -limit, limit))
    image = tf.clip_by_value(image, 0.0, 1.0)
    if augmentation.erasing > 0:
        image = _erase(image, seeds[5], augmentation.erasing)
    return image


# Data sets whose preprocessed images fit in this many bytes are decoded and resized once,
# up front; the training pipeline then only gathers and augments (ORL: 4 MB, LFW: 0.4 GB).
PREPROCESSED_CACHE_BYTES = 1 << 30


def _image_reader(faces: FaceImages, image_size, channels: int):
    """A function from an image index to its preprocessed (H, W, C) tensor.

    Small data sets are preprocessed once into a variable (outside the graph); larger
    ones are decoded per element from a lookup table of the encoded bytes.
    """
    import tensorflow as tf

    height, width = image_size
    if len(faces) * height * width * channels * 4 <= PREPROCESSED_CACHE_BYTES:
        batches = [images for images, _ in image_dataset(faces, image_size, channels, batch_size=256)]
        images = tf.Variable(tf.concat(batches, axis=0), trainable=False)  # (N, H, W, C)
        return lambda index: tf.gather(images, index)
    table = _image_table(faces.encoded)
    return lambda index: preprocess_encoded(table.lookup(index), image_size, channels)


def _image_table(encoded: np.ndarray):
    import tensorflow as tf

    keys = tf.range(len(encoded), dtype=tf.int64)
    values = tf.constant(list(encoded), dtype=tf.string)
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values), default_value=b"")


def pk_dataset(
    faces: FaceImages,
    sampler: PKSampler,
    image_size: tuple[int, int],
    channels: int,
    epochs: range | int = 1,
    augmentation: Augmentation | None = None,
):
    """A tf.data.Dataset of P x K batches ``(images (B, H, W, C) float32, labels (B,) int64)``.

    Args:
        faces: the images; ``sampler`` was built on ``faces.labels``.
        sampler: the P x K index sampler.
        image_size: (height, width) of the model input.
        channels: 1 or 3.
        epochs: the epoch numbers to produce (an int n means ``range(n)``); a resumed run
            passes ``range(start, end)`` and gets the same batches it would have had.
        augmentation: None for no augmentation (evaluation).

    Returns:
        Dataset of ``len(epochs) * sampler.batches_per_epoch`` batches.
    """
    epochs = range(epochs) if isinstance(epochs, int) else epochs
    return indexed_batches(
        faces, lambda: ((epoch, sampler.epoch(epoch)) for epoch in epochs), len(epochs) * sampler.batches_per_epoch,
        sampler.batch_size, image_size, channels, augmentation, seed=sampler.seed,
    )


def indexed_batches(faces: FaceImages, index_batches, num_batches: int, batch_size: int, image_size, channels: int,
                    augmentation: Augmentation | None = None, seed: int = 0):
    """Batches of the images named by host-side index arrays, decoded and augmented in parallel.

    Args:
        faces: the images.
        index_batches: a callable returning an iterable of ``(epoch, indices (batches, batch_size))``;
            called again each time the dataset is iterated, consumed lazily.
        num_batches: total number of batches it yields.
        batch_size: images per batch.
        image_size, channels: model input.
        augmentation: None for none; otherwise seeded by (seed, epoch, position).
        seed: base seed of the augmentation.

    Returns:
        Dataset of ``(images (batch_size, H, W, C) float32, labels (batch_size,) int64)``.
    """
    import tensorflow as tf

    read_image = _image_reader(faces, image_size, channels)
    labels = tf.constant(faces.labels, tf.int64)

    def flatten():
        for epoch, indices in index_batches():
            flat = np.asarray(indices, np.int64).reshape(-1)  # (batches * batch_size,)
            yield flat, np.full_like(flat, epoch), np.arange(len(flat), dtype=np.int64)

    def load(index, epoch, position):
        image = read_image(index)  # (H, W, C)
        if augmentation is not None:
            element_seed = tf.stack([tf.cast(seed, tf.int64) * 1_000_003 + epoch, position])  # (2,)
            image = _augment(image, element_seed, augmentation)
        return image, tf.gather(labels, index)

    spec = tf.TensorSpec([None], tf.int64)
    dataset = tf.data.Dataset.from_generator(flatten, output_signature=(spec, spec, spec))
    dataset = dataset.unbatch().map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(num_batches))
    return dataset.prefetch(tf.data.AUTOTUNE)


def image_dataset(faces: FaceImages, image_size: tuple[int, int], channels: int, batch_size: int = 64):
    """Every image once, in order, without augmentation: ``(images, labels)`` batches for embedding."""
    import tensorflow as tf

    table = _image_table(faces.encoded)
    labels = tf.constant(faces.labels, tf.int64)

    def load(index):
        return preprocess_encoded(table.lookup(index), image_size, channels), tf.gather(labels, index)

    dataset = tf.data.Dataset.range(len(faces)).map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
