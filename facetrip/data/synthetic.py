"""Synthetic training identities: new people made by blending the photos of two real ones.

With few training identities the embedding learns what tells *these* people apart. A
blended identity adds a person: each of its images is the pixel average of a random
photo of person A and a random photo of person B (two fixed people per synthetic
identity), so the network has to separate A, B and their blend. Measured on ORL
(docs/quality.md): 75 blends of 25 ORL training people lowered the EER on 3 of 3 splits
in the screening loop, but not through ``facetrip train`` (5 splits: EER 7.6% against
7.1% without), so it is off by default (``augment.blended_identities = 0``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from facetrip.data.sources import FaceImages


def blended_identities(faces: FaceImages, count: int, images_per_identity: int = 10, seed: int = 0) -> FaceImages:
    """``faces`` plus ``count`` synthetic identities, each blending two of its identities.

    Args:
        faces: the training images (at least two identities).
        count: synthetic identities to add (0 returns ``faces`` unchanged).
        images_per_identity: images of each synthetic identity.
        seed: seeds the choice of pairs and photos.

    Returns:
        FaceImages with the original images first, then ``count * images_per_identity``
        PNG images with labels ``len(faces.identity_names) + i`` and names
        ``"blend{i}:{A}+{B}"``. Each image is ``round((a + resize(b)) / 2)`` for a photo
        ``a`` of A and ``b`` of B, resized to ``a``'s size, in ``faces.channels`` channels.

    Raises:
        ValueError: ``count`` is negative, or ``faces`` has fewer than two identities.
    """
    import tensorflow as tf

    if count < 0:
        raise ValueError(f"the number of blended identities must be 0 or more, not {count}.")
    if count == 0:
        return faces
    people = np.unique(faces.labels)
    if len(people) < 2:
        raise ValueError("blending identities needs at least two training identities.")
    rng = np.random.default_rng(seed)

    def decoded(index: int):
        return tf.io.decode_image(bytes(faces.encoded[index]), channels=faces.channels, expand_animations=False)

    encoded, labels = list(faces.encoded), list(faces.labels)
    names, file_names = list(faces.identity_names), list(faces.file_names)
    for number in range(count):
        first, second = rng.choice(people, 2, replace=False)
        photos_first, photos_second = np.flatnonzero(faces.labels == first), np.flatnonzero(faces.labels == second)
        name = f"blend{number}:{faces.identity_names[first]}+{faces.identity_names[second]}"
        label = len(names)
        names.append(name)
        for image in range(images_per_identity):
            a = tf.cast(decoded(rng.choice(photos_first)), tf.float32)  # (h, w, c)
            b = tf.image.resize(tf.cast(decoded(rng.choice(photos_second)), tf.float32), tf.shape(a)[:2])
            mixed = tf.cast(tf.round((a + b) / 2), tf.uint8)
            encoded.append(tf.io.encode_png(mixed).numpy())
            labels.append(label)
            file_names.append(f"{name}/{image}.png")
    return dataclasses.replace(
        faces, encoded=np.asarray(encoded, dtype=object), labels=np.asarray(labels, np.int64),
        identity_names=names, file_names=np.asarray([str(name) for name in file_names]),
    )
