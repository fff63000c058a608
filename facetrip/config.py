"""The training configuration: typed sections whose defaults are the one source of truth.

``configs/default.toml`` mirrors these defaults for users to read and copy (a test keeps
the two identical). ``facetrip train --config FILE`` reads a TOML file with any subset of
the sections; command-line flags override single values; the config actually used is
saved with the run as ``config.toml``.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Union

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """An unreadable config file, an unknown key, or a value of the wrong type."""


@dataclasses.dataclass
class DataConfig:
    source: str = "orl_faces"  # orl_faces | folder:PATH | tfds:NAME[:SPLIT]
    data_dir: str = ""  # tfds storage; "" means tfds' default (~/tensorflow_datasets)
    face_chips: bool = True  # cut the aligned 150x150 face chip of every photo first (facetrip.data.face_chips)
    image_size: list = dataclasses.field(default_factory=lambda: [150, 150])  # height, width of the model input
    channels: int = 3  # 1 (grey) or 3 (RGB); face_resnet reads RGB (grey images are copied to 3 channels)


@dataclasses.dataclass
class SplitConfig:
    test: float = 10  # identities for test: a count (>= 1) or a fraction (< 1)
    dev: float = 5  # identities for dev: threshold calibration and checkpoint choice
    seed: int = 0


@dataclasses.dataclass
class SamplerConfig:
    identities_per_batch: int = 16  # P
    images_per_identity: int = 4  # K


@dataclasses.dataclass
class AugmentConfig:
    enabled: bool = True
    flip: bool = True
    max_shift: float = 0.03  # random translation, fraction of height / width (face chips are aligned: small)
    brightness: float = 0.1
    contrast: float = 0.2
    rotation: float = 0.0  # largest random rotation, degrees
    scale: float = 0.05  # largest random zoom about the centre, fraction (factors 1 - scale .. 1 + scale)
    erasing: float = 0.0  # probability of erasing a random rectangle (random erasing)
    blended_identities: int = 0  # synthetic training identities, each blending two real ones (facetrip.data.synthetic)


@dataclasses.dataclass
class LossConfig:
    strategy: str = "batch_hard"  # batch_all | batch_hard | semi_hard | offline
    margin: Union[float, str] = 0.2  # a number >= 0, or "soft"
    metric: str = "euclidean"  # euclidean | squared | cosine
    offline_triplets: str = ""  # offline only: a `facetrip mine` file for the first epoch ("" = mine)


@dataclasses.dataclass
class ModelConfig:
    backbone: str = "face_resnet"  # face_resnet (dlib's pretrained face ResNet, fine-tuned) | resnet_small | resnet50
    freeze: str = "none"  # face_resnet: none | stem | stage1 .. stage5 (frozen up to it) | all (only the head trains)
    width: int = 8  # channels of the first resnet_small stage (doubling per stage); 8 beat 16 on 5 ORL splits
    embedding_dim: int = 128  # 128 = the face ResNet's descriptor size: the head starts as the identity
    head: str = "flatten"  # pool (global average) | flatten (keeps where on the face a feature is)
    dropout: float = 0.0
    flip_tta: bool = True  # export f(x) + f(mirror(x)), renormalised (flip test-time augmentation)
    tta_shift: int = 0  # also embed copies shifted by this many pixels up/down/left/right (0 = off; 1 in configs/scratch.toml)


@dataclasses.dataclass
class TrainConfig:
    epochs: int = 20
    warmup_epochs: int = 0  # epochs of cosine-softmax classification before the triplet loss takes over
    classification_weight: float = 1.0  # weight of the classification term after the warm-up
    optimizer: str = "lamb"  # lamb (layer-wise steps relative to each weight's size: fine-tuning) | adamw
    learning_rate: float = 1e-3
    lr_warmup_epochs: int = 1  # linear warm-up of the learning rate before the cosine decay
    weight_decay: float = 1e-4
    precision: str = "float32"  # float32 | bf16
    target_far: float = 0.01  # the saved threshold is calibrated to this false-accept rate on dev pairs
    checkpoint_seconds: float = 30.0  # save model + backup at the first epoch end this long after the last save
    seed: int = 0


@dataclasses.dataclass
class Config:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Defaults updated by ``data`` ({section: {key: value}}); unknown names are errors."""
        config = cls()
        for section_name, values in data.items():
            if section_name not in SECTIONS:
                raise ConfigError(f"Unknown config section [{section_name}]: expected one of {', '.join(SECTIONS)}.")
            if not isinstance(values, dict):
                raise ConfigError(f"Config section [{section_name}] must be a table of keys.")
            for key, value in values.items():
                config.set(f"{section_name}.{key}", value)
        return config

    @classmethod
    def from_toml(cls, path: str | Path) -> Config:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"Config file {path} does not exist.") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"Config file {path} is not valid TOML: {error}.") from None
        return cls.from_dict(data)

    def set(self, dotted_key: str, value: Any) -> None:
        """Set ``section.key`` to ``value``, checked against the default's type."""
        section_name, _, key = dotted_key.partition(".")
        section = getattr(self, section_name, None) if section_name in SECTIONS else None
        if section is None or key not in {field.name for field in dataclasses.fields(section)}:
            raise ConfigError(f"Unknown config key {dotted_key!r}.")
        setattr(section, key, _checked(dotted_key, getattr(section, key), value))


SECTIONS = tuple(field.name for field in dataclasses.fields(Config))


def _checked(name: str, default: Any, value: Any) -> Any:
    if name == "loss.margin":
        if isinstance(value, str) and value.lower() == "soft":
            return "soft"
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            return float(value)
        raise ConfigError(f"loss.margin must be a number >= 0 or 'soft', not {value!r}.")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, not {value!r}.")
        return value
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise ConfigError(f"{name} must be a whole number, not {value!r}.")
        return int(value)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, not {value!r}.")
        return float(value)
    if isinstance(default, list):
        if not isinstance(value, (list, tuple)) or len(value) != len(default):
            raise ConfigError(f"{name} must be a list of {len(default)} values, not {value!r}.")
        return [_checked(name, default[0], item) for item in value]
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, not {value!r}.")
        return value
    return value
