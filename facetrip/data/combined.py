"""Photos of two sources as one :class:`~facetrip.data.sources.FaceImages`: what replay trains on.

    first (N1 photos, L1 identities) + second (N2, L2) -> N1 + N2 photos, L1 + L2 identities
    photo i < N1 is first's photo i; photo N1 + j is second's photo j, its label moved up by L1

The images (and file names) of each source stay where they are, in memory or in a prepared
set on disk: a :class:`ChainedColumn` records, for every photo, which part holds it and
where, and :func:`chained_reader` reads a batch from each part and puts the pieces back in
the batch's order.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from facetrip.data.sources import FaceImages

# Photos are read this many at a time when a whole column is read.
_READ_CHUNK = 512


class ChainedColumn:
    """Several columns (arrays or :class:`~facetrip.data.records.RecordColumn` s) as one, in a given order.

    Indexing with an int reads that photo's value; with a 1-D int array, a slice or a
    boolean mask it gives another column over those photos (nothing is read); with an n-D
    int array it reads the values into an array of that shape. Iterating reads in chunks.

    Args:
        parts: the columns.
        part_of: (N,) which part holds each photo.
        position: (N,) where in its part.
    """

    def __init__(self, parts, part_of, position):
        self.parts = tuple(parts)
        self.part_of = np.asarray(part_of, np.int64).reshape(-1)
        self.position = np.asarray(position, np.int64).reshape(-1)

    @classmethod
    def of(cls, *parts) -> ChainedColumn:
        """Every value of ``parts[0]``, then every value of ``parts[1]``, and so on."""
        part_of = np.concatenate([np.full(len(part), number, np.int64) for number, part in enumerate(parts)])
        position = np.concatenate([np.arange(len(part), dtype=np.int64) for part in parts])
        return cls(parts, part_of, position)

    def __len__(self) -> int:
        return len(self.part_of)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self.parts[self.part_of[index]][int(self.position[index])]
        part_of, position = self.part_of[index], self.position[index]
        if part_of.ndim == 1:
            return ChainedColumn(self.parts, part_of, position)
        flat = np.asarray(ChainedColumn(self.parts, part_of.reshape(-1), position.reshape(-1)))
        return flat.reshape(part_of.shape)

    def _chunk(self, start: int, stop: int) -> list:
        """The values of photos ``start .. stop - 1``, read part by part."""
        part_of, position = self.part_of[start:stop], self.position[start:stop]
        values: list = [None] * len(part_of)
        for number in np.unique(part_of):
            slots = np.flatnonzero(part_of == number)
            for slot, value in zip(slots, self.parts[number][position[slots]]):
                values[slot] = value
        return values

    def __iter__(self):
        for start in range(0, len(self), _READ_CHUNK):
            yield from self._chunk(start, start + _READ_CHUNK)

    def __array__(self, dtype=None, copy=None):
        from facetrip.data.records import column_array

        values = list(self)
        return column_array(values, bool(values) and isinstance(values[0], bytes), dtype)

    def tolist(self) -> list:
        return list(self)


def chained_faces(first: FaceImages, second: FaceImages) -> FaceImages:
    """``first``'s photos, then ``second``'s, with ``second``'s identities numbered after ``first``'s.

    Args:
        first, second: photos as the same model reads them (the caller checks their ``model_input``).

    Returns:
        FaceImages of ``len(first) + len(second)`` photos: labels ``first.labels`` then
        ``second.labels + len(first.identity_names)``; identity names ``first``'s then
        ``second``'s; the source, channels and model input of ``first``.
    """
    offset = len(first.identity_names)
    return dataclasses.replace(
        first,
        encoded=ChainedColumn.of(first.encoded, second.encoded),
        labels=np.concatenate([first.labels, second.labels + offset]).astype(np.int64),
        identity_names=[*first.identity_names, *second.identity_names],
        file_names=ChainedColumn.of(first.file_names, second.file_names),
    )


def chained_reader(column: ChainedColumn, part_reader):
    """A TensorFlow function from (B,) int64 indices into ``column`` to their (B,) encoded images.

    Args:
        column: the chained column of encoded images.
        part_reader: gives, for one part, its function from (B,) int64 positions to (B,) encoded images.

    Returns:
        ``read(indices)``: each part reads the photos it holds, and the pieces are stitched
        back into the order of ``indices``.
    """
    import tensorflow as tf

    readers = [part_reader(part) for part in column.parts]
    part_of = tf.constant(column.part_of, tf.int64)  # (N,)
    position = tf.constant(column.position, tf.int64)  # (N,)

    def read(indices):
        parts = tf.gather(part_of, indices)  # (B,)
        positions = tf.gather(position, indices)  # (B,)
        slots, pieces = [], []
        for number, reader in enumerate(readers):
            where = tf.reshape(tf.where(tf.equal(parts, number)), [-1])  # (B_p,) slots of part p's photos
            slots.append(tf.cast(where, tf.int32))
            pieces.append(tf.cond(tf.size(where) > 0, lambda: reader(tf.gather(positions, where)),
                                  lambda: tf.zeros([0], tf.string)))  # (B_p,)
        return tf.dynamic_stitch(slots, pieces)  # (B,)

    return read
