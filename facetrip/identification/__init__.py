"""Identification and clustering: who, among the people of a gallery, is on a photo; which photos show one person.

::

    gallery photos --run's model--> index (embeddings, identities, files, manifest)      facetrip index
    probe photo    --run's model--> top-k people by distance -> a person or unknown     facetrip identify
    unlabelled photos --> threshold graph / linkage -> clusters + contact sheets        facetrip cluster

The core (:mod:`.index`, :mod:`.search`, :mod:`.ann`, :mod:`.clustering`, :mod:`.metrics`,
:mod:`.contact_sheet`, :mod:`.decision` (which threshold identify decides with), :mod:`.open_set`
(DIR against FPIR of an index)) works on NumPy arrays and files; :mod:`.photos` is the one bridge to a
loaded run (photos in, embeddings out).
"""

from facetrip.identification.index import GalleryIndex, GalleryIndexError, model_fingerprint, read_index, write_index
from facetrip.identification.search import SCORES, identify_embeddings, top_people

__all__ = [
    "GalleryIndex",
    "GalleryIndexError",
    "SCORES",
    "identify_embeddings",
    "model_fingerprint",
    "read_index",
    "top_people",
    "write_index",
]
