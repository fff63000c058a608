"""The data side: sources through tfds, identity-disjoint splits, the P x K sampler, tf.data pipelines."""

from facetrip.data.errors import DataError
from facetrip.data.images import ImageReadError, load_image, preprocess_encoded, read_image_bytes
from facetrip.data.pipeline import Augmentation, image_dataset, pk_dataset
from facetrip.data.sampler import PKSampler
from facetrip.data.sources import FaceImages, SourceSpec, load_faces, parse_source
from facetrip.data.splits import IdentitySplit, split_identities

__all__ = [
    "Augmentation",
    "DataError",
    "FaceImages",
    "IdentitySplit",
    "ImageReadError",
    "PKSampler",
    "SourceSpec",
    "image_dataset",
    "load_faces",
    "load_image",
    "parse_source",
    "pk_dataset",
    "preprocess_encoded",
    "read_image_bytes",
    "split_identities",
]
