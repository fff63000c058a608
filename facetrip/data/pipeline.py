"""tf.data pipelines: P x K training batches and plain batches for embedding / evaluation.

Index batches come from :class:`~facetrip.data.sampler.PKSampler` on the host. Images
are decoded and resized by :func:`~facetrip.data.images.preprocess_encoded`, the same
function inference uses: once up front for data sets that fit in memory, otherwise per
image from a TensorFlow lookup table of the encoded bytes (outside the graph, so large
data sets do not hit the 2 GB graph limit). Augmentation works on whole batches, several
batches in parallel.
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
        scale: largest random zoom about the centre, as a fraction: factors in
            [1 - scale, 1 + scale] (over 1 magnifies).
    """

    flip: bool = True
    max_shift: float = 0.08
    brightness: float = 0.1
    contrast: float = 0.2
    rotation: float = 0.0
    erasing: float = 0.0
    scale: float = 0.0


def _geometric_transforms(flips, shifts, angles, height: int, width: int, zooms=None):
    """Projective transforms that flip, shift by whole pixels, then rotate and zoom each image.

    The result is what mirroring (if ``flips``), then translating by ``shifts``, then
    rotating by ``angles`` and zooming by ``zooms`` about the centre would give, done as
    one resampling: output pixel (x, y) samples input pixel

        u = (cos a (x - cx) - sin a (y - cy)) / z + cx + shift_x,   y_in = (sin a (x - cx) + cos a (y - cy)) / z + cy + shift_y,
        x_in = (W - 1) - u if flipped else u,

    with (cx, cy) the centre. Whole-pixel shifts and flips without rotation or zoom sample
    pixel centres exactly, so they copy pixels.

    Args:
        flips: (B,) bool.
        shifts: (B, 2) float32, (shift_y, shift_x) in pixels.
        angles: (B,) float32, radians.
        height, width: image size.
        zooms: (B,) float32 zoom factors z (over 1 magnifies); None for 1.

    Returns:
        (B, 8) float32 rows for ``ImageProjectiveTransformV3``.
    """
    import tensorflow as tf

    zooms = tf.ones_like(angles) if zooms is None else zooms
    cos, sin = tf.cos(angles) / zooms, tf.sin(angles) / zooms  # (B,) each, the rotation shrunk by the zoom
    centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
    u_offset = centre_x - cos * centre_x + sin * centre_y + shifts[:, 1]  # (B,)
    y_offset = centre_y - sin * centre_x - cos * centre_y + shifts[:, 0]  # (B,)
    sign = tf.where(flips, -1.0, 1.0)  # (B,)
    x_offset = tf.where(flips, (width - 1) - u_offset, u_offset)
    zeros = tf.zeros_like(cos)
    return tf.stack([sign * cos, -sign * sin, x_offset, sin, cos, y_offset, zeros, zeros], axis=1)  # (B, 8)


def _erase(images, seed, probability: float):
    """With ``probability`` per image, replace a random rectangle of (B, H, W, C) images by uniform noise."""
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(seed, num=2)  # (2, 2)
    batch, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
    draws = tf.random.stateless_uniform([5, batch], seeds[0])  # apply?, box height, box width, top, left
    box_height = tf.cast((0.1 + 0.4 * draws[1]) * height, tf.int32)  # (B,)
    box_width = tf.cast((0.1 + 0.4 * draws[2]) * width, tf.int32)
    top = tf.cast(draws[3] * tf.cast(height - box_height, tf.float32), tf.int32)
    left = tf.cast(draws[4] * tf.cast(width - box_width, tf.float32), tf.int32)
    rows = tf.range(height)[None, :, None]  # (1, H, 1)
    columns = tf.range(width)[None, None, :]  # (1, 1, W)
    inside = ((rows >= top[:, None, None]) & (rows < (top + box_height)[:, None, None])
              & (columns >= left[:, None, None]) & (columns < (left + box_width)[:, None, None]))  # (B, H, W)
    inside &= (draws[0] < probability)[:, None, None]
    noise = tf.random.stateless_uniform(tf.shape(images), seeds[1])
    return tf.where(inside[..., None], noise, images)


def _augment(images, seed, augmentation: Augmentation):
    """Augment a (B, H, W, C) batch in [0, 1], each image with its own draws, seeded by ``seed`` (2,) int64.

    Flip, shift and rotation are one resampling per image (reflected borders), then
    brightness (``x + delta``) and contrast (``(x - mean) * factor + mean``, per image and
    channel), clipping to [0, 1], and random erasing. Whole batches at a time: the
    per-image work is a few vectorised ops, so the input pipeline stays a small share of
    a training step even for small models.
    """
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(seed, num=7)  # (7, 2)
    batch, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
    flips = tf.random.stateless_uniform([batch], seeds[0]) < (0.5 if augmentation.flip else 0.0)  # (B,)
    pad_y, pad_x = int(round(height * augmentation.max_shift)), int(round(width * augmentation.max_shift))
    shifts = tf.stack([
        tf.random.stateless_uniform([batch], seeds[1], -pad_y, pad_y + 1, dtype=tf.int32),
        tf.random.stateless_uniform([batch], seeds[2], -pad_x, pad_x + 1, dtype=tf.int32),
    ], axis=1)  # (B, 2)
    limit = augmentation.rotation * np.pi / 180
    angles = tf.random.stateless_uniform([batch], seeds[3], -limit, limit) if limit > 0 else tf.zeros([batch])
    zooms = None
    if augmentation.scale > 0:
        zoom_seed = tf.random.experimental.stateless_fold_in(seeds[3], 1)
        zooms = tf.random.stateless_uniform([batch], zoom_seed, 1 - augmentation.scale, 1 + augmentation.scale)  # (B,)
    if augmentation.flip or augmentation.max_shift > 0 or augmentation.rotation > 0 or augmentation.scale > 0:
        images = tf.raw_ops.ImageProjectiveTransformV3(
            images=images,
            transforms=_geometric_transforms(flips, tf.cast(shifts, tf.float32), angles, height, width, zooms),
            output_shape=[height, width], fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT",
        )  # (B, H, W, C)
    if augmentation.brightness > 0:
        images += tf.random.stateless_uniform([batch, 1, 1, 1], seeds[4], -augmentation.brightness,
                                              augmentation.brightness)
    if augmentation.contrast > 0:
        factors = tf.random.stateless_uniform([batch, 1, 1, 1], seeds[5], 1 - augmentation.contrast,
                                              1 + augmentation.contrast)
        means = tf.reduce_mean(images, axis=[1, 2], keepdims=True)  # (B, 1, 1, C)
        images = (images - means) * factors + means
    images = tf.clip_by_value(images, 0.0, 1.0)
    if augmentation.erasing > 0:
        images = _erase(images, seeds[6], augmentation.erasing)
    return images


# Data sets whose preprocessed images fit in this many bytes are decoded and resized once,
# up front; the training pipeline then only gathers and augments (ORL: 4 MB, LFW: 0.4 GB).
PREPROCESSED_CACHE_BYTES = 1 << 30
# The same for a prepared set read from disk, whose size has no bound: above this, every
# batch is read by random access and decoded, so memory does not grow with the set.
PREPARED_CACHE_BYTES = 256 << 20  # ORL as 150 x 150 colour chips: 108 MB


def _batch_reader(faces: FaceImages, image_size, channels: int):
    """A function from (B,) image indices to their preprocessed (B, H, W, C) images.

    Small data sets are preprocessed once into a variable (outside the graph) and a batch
    is one gather; larger ones are decoded image by image, from a lookup table of the
    encoded bytes held in memory or from a prepared set's records read by random access.
    """
    import tensorflow as tf

    from facetrip.data.combined import ChainedColumn
    from facetrip.data.records import RecordColumn

    height, width = image_size
    on_disk = isinstance(faces.encoded, RecordColumn) or (
        isinstance(faces.encoded, ChainedColumn) and any(isinstance(part, RecordColumn) for part in faces.encoded.parts))
    cache_bytes = PREPARED_CACHE_BYTES if on_disk else PREPROCESSED_CACHE_BYTES
    if len(faces) * height * width * channels * 4 <= cache_bytes:
        batches = [images for images, _ in image_dataset(faces, image_size, channels, batch_size=256)]
        images = tf.Variable(tf.concat(batches, axis=0), trainable=False)  # (N, H, W, C)
        return lambda indices: tf.gather(images, indices)
    read_encoded = _encoded_reader(faces)
    return lambda indices: tf.map_fn(
        lambda encoded: preprocess_encoded(encoded, image_size, channels), read_encoded(indices),
        fn_output_signature=tf.TensorSpec([height, width, channels], tf.float32),
    )  # (B, H, W, C)


def _encoded_reader(faces: FaceImages):
    """A function from (B,) int64 image indices to their (B,) encoded images.

    Photos of a prepared set are read from its shards by random access; photos held in
    memory are looked up in a table of their bytes; photos of two sources
    (:mod:`facetrip.data.combined`) are read from each, and put back in order.
    """
    return _column_reader(faces.encoded)


def _column_reader(encoded):
    """:func:`_encoded_reader` of one column of encoded images."""
    from facetrip.data.combined import ChainedColumn, chained_reader
    from facetrip.data.records import RecordColumn, encoded_image_reader

    if isinstance(encoded, ChainedColumn):
        return chained_reader(encoded, _column_reader)
    if isinstance(encoded, RecordColumn):
        return encoded_image_reader(encoded)
    table = _image_table(encoded)
    return table.lookup


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
    """Batches of the images named by host-side index arrays, read and augmented in parallel.

    Args:
        faces: the images.
        index_batches: a callable returning an iterable of ``(epoch, indices (batches, batch_size))``;
            called again each time the dataset is iterated, consumed lazily.
        num_batches: total number of batches it yields.
        batch_size: images per batch.
        image_size, channels: model input.
        augmentation: None for none; otherwise seeded by (seed, epoch, batch position in the epoch).
        seed: base seed of the augmentation.

    Returns:
        Dataset of ``(images (batch_size, H, W, C) float32, labels (batch_size,) int64)``.
    """
    import tensorflow as tf

    read_images = _batch_reader(faces, image_size, channels)
    labels = tf.constant(faces.labels, tf.int64)

    def batches():
        for epoch, indices in index_batches():
            for position, batch in enumerate(np.asarray(indices, np.int64).reshape(-1, batch_size)):
                yield batch, np.int64(epoch), np.int64(position)

    def load(indices, epoch, position):
        images = read_images(indices)  # (B, H, W, C)
        if augmentation is not None:
            batch_seed = tf.stack([tf.cast(seed, tf.int64) * 1_000_003 + epoch, position])  # (2,)
            images = _augment(images, batch_seed, augmentation)
        return images, tf.gather(labels, indices)

    scalar = tf.TensorSpec([], tf.int64)
    dataset = tf.data.Dataset.from_generator(
        batches, output_signature=(tf.TensorSpec([batch_size], tf.int64), scalar, scalar))
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(num_batches))
    return dataset.prefetch(tf.data.AUTOTUNE)


def image_dataset(faces: FaceImages, image_size: tuple[int, int], channels: int, batch_size: int = 64):
    """Every image once, in order, without augmentation: ``(images, labels)`` batches for embedding."""
    import tensorflow as tf

    read_encoded = _encoded_reader(faces)
    labels = tf.constant(faces.labels, tf.int64)
    height, width = image_size

    def load(indices):
        images = tf.map_fn(lambda encoded: preprocess_encoded(encoded, image_size, channels), read_encoded(indices),
                           fn_output_signature=tf.TensorSpec([height, width, channels], tf.float32))  # (B, H, W, C)
        return images, tf.gather(labels, indices)

    dataset = tf.data.Dataset.range(len(faces)).batch(batch_size)
    return dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)
