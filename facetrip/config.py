"""The training configuration: typed sections whose defaults are the one source of truth.

``configs/default.toml`` mirrors these defaults for users to read and copy (a test keeps
the two identical). ``facetrip train --config FILE`` reads a TOML file with any subset of
the sections; command-line flags override single values; the config actually used is
saved with the run as ``config.toml``. Every value is checked as it is read: its type, and
for numbers finiteness and the range in :data:`ALLOWED`.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Union

from facetrip.untrusted_files import UntrustedFileError, read_untrusted_toml

# train.weight_interpolation's value that chooses the share on the dev identities.
AUTO_INTERPOLATION = "auto"

# Keys that take a number in their ALLOWED range or one word: key -> (the word, the numbers allowed).
NUMBER_OR_WORD = {
    "loss.margin": ("soft", "a number >= 0"),
    "train.weight_interpolation": (AUTO_INTERPOLATION, "a number from 0 to 1"),
}

# Keys that take one of a few words: key -> the words (any case). The heads mirror facetrip.losses.margin_heads.HEADS
# (a test keeps them equal; this module stays free of TensorFlow).
WORD_CHOICES = {
    "train.classification_head": ("cosine", "arcface", "cosface"),
}


class ConfigError(ValueError):
    """An unreadable config file, an unknown key, or a value of the wrong type or out of range."""


@dataclasses.dataclass
class DataConfig:
    source: str = "orl_faces"  # orl_faces | folder:PATH | tfds:NAME[:SPLIT]
    data_dir: str = ""  # tfds storage; "" means tfds' default (~/tensorflow_datasets)
    face_chips: bool = True  # cut the aligned 150x150 face chip of every photo first (facetrip.data.face_chips)
    aligned: str = "none"  # none (find each face) | dlib (photos are dlib chips) | arcface (112x112 ArcFace crops)
    chip_format: str = "png"  # how a prepared set stores its chips: png (lossless) | jpeg (quality 95, a quarter of the disk)
    image_size: list = dataclasses.field(default_factory=lambda: [150, 150])  # height, width of the model input
    channels: int = 3  # 1 (grey) or 3 (RGB); face_resnet reads RGB (grey images are copied to 3 channels)


@dataclasses.dataclass
class SplitConfig:
    test: float = 10.0  # identities for test: a count (>= 1) or a fraction (< 1)
    dev: float = 5.0  # identities for dev: threshold calibration and checkpoint choice
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
    # Cross-batch memory (XBM): also mine against the last N training embeddings (0 = off):
    # facetrip/training/cross_batch_memory.py; at most the training photos, online strategies.
    memory_size: int = 0
    memory_warmup_steps: int = 0  # steps trained before the memory switches on


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
    steps_per_epoch: int = 0  # 0 = one pass over the identities' photos per epoch; N = N P x K batches
    warmup_epochs: int = 0  # epochs of cosine-softmax classification before the triplet loss takes over
    classification_weight: float = 1.0  # weight of the classification term after the warm-up
    # The classifier's logits: cosine (NormFace, s * cos) | arcface (target s * cos(theta + m)) | cosface
    # (target s * (cos - m)): facetrip/losses/margin_heads.py.
    classification_head: str = "cosine"
    classification_scale: float = 0.0  # s; 0 = the head's default (cosine 16, arcface and cosface 64)
    classification_margin: float = 0.0  # m; 0 = the head's default (arcface 0.5 rad, cosface 0.35; cosine: none)
    # Above this many training identities each step trains the centres of a sample of this many (Partial FC):
    # facetrip/training/sampled_classifier.py; 0 = always all of them.
    classifier_sample: int = 8192
    optimizer: str = "lamb"  # lamb (layer-wise steps relative to each weight's size: fine-tuning) | adamw
    learning_rate: float = 1e-3
    lr_warmup_epochs: int = 1  # linear warm-up of the learning rate before the cosine decay
    # Pretrained backbones: the saved weights are (1 - a) * pretrained + a * fine-tuned (WiSE-FT); 1 = fine-tuned;
    # "auto": the smallest a within half a point of the best dev EER (facetrip/training/weight_choice.py).
    weight_interpolation: Union[float, str] = AUTO_INTERPOLATION
    weight_decay: float = 1e-4
    precision: str = "float32"  # float32 | bf16
    target_far: float = 0.01  # the saved threshold is calibrated to this false-accept rate on dev pairs
    # After calibration, the saved threshold's false-accept rate on this source's people, never trained on ("" = off;
    # skipped when it is the training source): facetrip/evaluation/stranger_check.py
    stranger_check: str = "orl_faces"
    # Replay: also train on this source's people (in-the-wild photos of others), a share of each P x K batch's
    # identities, so fine-tuning forgets less ("" = off): facetrip/training/replay.py
    replay: str = ""
    replay_share: float = 0.25  # the share of each batch's identities drawn from train.replay, in [0, 1)
    checkpoint_seconds: float = 30.0  # save model + backup at the first epoch end this long after the last save
    seed: int = 0
    distribute: str = "none"  # none | mirrored (every local GPU, or --replicas CPU devices) | multi-worker (TF_CONFIG)
    replicas: int = 0  # mirrored: replicas (0 = every local GPU; without GPUs, the CPU split into this many devices)
    mining_scope: str = "global"  # with replicas: mine each replica's anchors over the global batch | replica (its own rows)


@dataclasses.dataclass
class IdentifyConfig:
    # identify names a stranger as one of the index's G people at most this often (FPIR): it decides with the
    # pair FAR 1 - (1 - false_alarm)^(1/G) on the run's calibration pairs (facetrip/identification/decision.py)
    false_alarm: float = 0.01


@dataclasses.dataclass
class Config:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    identify: IdentifyConfig = dataclasses.field(default_factory=IdentifyConfig)

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
        if config.train.classification_head == "cosine" and config.train.classification_margin != 0:
            raise ConfigError(
                f"train.classification_margin applies to the arcface and cosface heads; the cosine head has no margin: "
                f"set it to 0, or choose train.classification_head = \"arcface\" (not "
                f"{config.train.classification_margin!r} with \"cosine\")."
            )
        return config

    @classmethod
    def from_toml(cls, path: str | Path) -> Config:
        """A config from a TOML file: a regular file of at most 1 MiB, nested at most 64 deep, every key checked.

        Raises:
            ConfigError: the file is missing, is a folder, FIFO or device, is too large, is not
                UTF-8 TOML or nests too deep, or holds an unknown key or a value out of range.
        """
        path = Path(path)
        try:
            data = read_untrusted_toml(path, what="config")
        except UntrustedFileError as error:
            if error.reason == "missing":
                raise ConfigError(f"Config file {path} does not exist.") from None
            if error.reason == "not regular":
                raise ConfigError(f"Config file {path} is not a file: {error}; give --config a TOML file.") from None
            raise ConfigError(f"Config file: {error}.") from None
        try:
            return cls.from_dict(data)
        except ConfigError as error:
            raise ConfigError(f"Config file {path}: {error}") from None

    def set(self, dotted_key: str, value: Any) -> None:
        """Set ``section.key`` to ``value``, checked against the default's type and the key's :data:`ALLOWED` range.

        Config files and command-line flags both come through here, so a bad value is
        refused before any data is prepared.

        Args:
            dotted_key: ``section.key``, e.g. ``train.epochs``.
            value: the new value (TOML or command-line types).

        Raises:
            ConfigError: an unknown key, or a value of the wrong type, not finite or out of range.
        """
        section_name, _, key = dotted_key.partition(".")
        section = getattr(self, section_name, None) if section_name in SECTIONS else None
        if section is None or key not in {field.name for field in dataclasses.fields(section)}:
            raise ConfigError(f"Unknown config key {dotted_key!r}.")
        setattr(section, key, _checked(dotted_key, getattr(section, key), value))


SECTIONS = tuple(field.name for field in dataclasses.fields(Config))
# Sections added after facetrip first wrote runs: the config.toml of an earlier run lacks them (their defaults apply).
LATER_SECTIONS = ("identify",)
# The sections every run's config.toml names (how a run directory is recognised: facetrip.training.run_dir).
RUN_SECTIONS = tuple(name for name in SECTIONS if name not in LATER_SECTIONS)


@dataclasses.dataclass(frozen=True)
class Allowed:
    """The valid values of one numeric config key.

    Attributes:
        low, high: the smallest and largest value (None: unbounded on that side).
        low_open, high_open: the bound itself is not allowed.
        choices: the only values allowed, instead of a range.
        count_or_fraction: a whole count >= 1 or a fraction in [0, 1) (identities of a split).
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    count_or_fraction: bool = False

    def admits(self, number: float) -> bool:
        """Whether ``number`` (finite, of the key's type) is allowed.

        Args:
            number: the value, already converted to the key's type.

        Returns:
            True when it lies in the range (or is one of the choices).
        """
        if self.choices:
            return number in self.choices
        if self.count_or_fraction:
            return 0 <= number < 1 or (1 <= number <= _LARGEST_WHOLE and number == int(number))
        if self.low is not None and (number <= self.low if self.low_open else number < self.low):
            return False
        return self.high is None or (number < self.high if self.high_open else number <= self.high)

    def bounds(self) -> str:
        """The range in words: ``from 0 to 1``, ``>= 2``, ``> 0 and < 1`` ("" when unbounded).

        Returns:
            The range, without the kind of number.
        """
        if self.low is not None and self.high is not None and not (self.low_open or self.high_open):
            return f"from {self.low} to {self.high}"
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {self.low}")
        if self.high is not None:
            bounds.append(f"{'<' if self.high_open else '<='} {self.high}")
        return " and ".join(bounds)

    def describe(self, whole: bool) -> str:
        """What is allowed, in words: ``a whole number >= 0``, ``a number > 0 and < 1``, ``1 or 3``.

        Args:
            whole: the key holds whole numbers.

        Returns:
            The phrase that completes "KEY must be ...".
        """
        if self.choices:
            return " or ".join(str(choice) for choice in self.choices)
        if self.count_or_fraction:
            return "a count (a whole number >= 1) or a fraction (>= 0 and < 1)"
        kind = "a whole number" if whole else "a number"
        return f"{kind} {self.bounds()}" if self.bounds() else kind


# NumPy's legacy seeding (keras.utils.set_random_seed) takes only 0 .. 2**32 - 1.
_LARGEST_SEED = 2**32 - 1
# Whole numbers become TensorFlow int32 shapes and step counts; nothing sensible comes near this.
_LARGEST_WHOLE = 2**31 - 1
# An input side beyond this would need gigabytes per batch; face chips are 150 x 150.
_LARGEST_IMAGE_SIDE = 4096

# The valid range of every numeric key, from how the code uses it (a test checks that each
# numeric default has an entry, so a new key cannot skip validation).
ALLOWED: dict[str, Allowed] = {
    "data.image_size": Allowed(1, _LARGEST_IMAGE_SIDE),  # each of height, width
    "data.channels": Allowed(choices=(1, 3)),  # grey or RGB
    "split.test": Allowed(count_or_fraction=True),
    "split.dev": Allowed(count_or_fraction=True),
    "split.seed": Allowed(0, _LARGEST_SEED),
    "sampler.identities_per_batch": Allowed(2),  # a triplet needs a second identity
    "sampler.images_per_identity": Allowed(2),  # a positive pair needs two images
    "augment.max_shift": Allowed(0, 1),  # a fraction of height / width
    "augment.brightness": Allowed(0, 1),  # images are in [0, 1]
    "augment.contrast": Allowed(0, 1),  # factors 1 - contrast .. 1 + contrast must stay >= 0
    "augment.rotation": Allowed(0, 180),  # degrees either way
    "augment.scale": Allowed(0, 1, high_open=True),  # zoom factors 1 - scale .. 1 + scale must stay > 0
    "augment.erasing": Allowed(0, 1),  # a probability
    "augment.blended_identities": Allowed(0),
    "loss.margin": Allowed(0),  # or "soft"
    "loss.memory_size": Allowed(0),  # embeddings held; 0 = off
    "loss.memory_warmup_steps": Allowed(0),
    "model.width": Allowed(1),
    "model.embedding_dim": Allowed(1),
    "model.dropout": Allowed(0, 1, high_open=True),  # a rate of 1 would drop every feature
    "model.tta_shift": Allowed(0),  # pixels; 0 = off
    "train.epochs": Allowed(0),  # 0 = the network as it is, exported and evaluated
    "train.steps_per_epoch": Allowed(0),  # 0 = about one pass over the training photos
    "train.warmup_epochs": Allowed(0),
    "train.classification_weight": Allowed(0),
    "train.classification_scale": Allowed(0, 1024),  # 0 = the head's default; logits up to s must stay finite
    "train.classification_margin": Allowed(0, 1),  # 0 = the head's default; radians for arcface, < pi / 2
    "train.classifier_sample": Allowed(0),  # 0 = the full classifier
    "train.learning_rate": Allowed(0, low_open=True),
    "train.lr_warmup_epochs": Allowed(0),
    "train.weight_interpolation": Allowed(0, 1),  # 0 = the pretrained weights, 1 = the fine-tuned ones
    "train.weight_decay": Allowed(0),
    "train.target_far": Allowed(0, 1, low_open=True, high_open=True),  # a false-accept rate to calibrate to
    "train.checkpoint_seconds": Allowed(0),
    "train.replay_share": Allowed(0, 1, high_open=True),  # a share of each batch's identities
    "train.seed": Allowed(0, _LARGEST_SEED),
    "train.replicas": Allowed(0, 256),  # 0 = every local GPU (one CPU device without GPUs)
    "identify.false_alarm": Allowed(0, 1, low_open=True, high_open=True),  # a share of strangers named as someone
}


def _checked_number(name: str, whole: bool, value: Any) -> int | float:
    """``value`` as the int or float of key ``name``, if it is finite and in :data:`ALLOWED`.

    Args:
        name: the dotted key, for the error message.
        whole: the key holds whole numbers.
        value: the value from the file or the command line.

    Returns:
        The value as int (``whole``) or float.

    Raises:
        ConfigError: naming the key, the value and what is allowed.
    """
    allowed = ALLOWED.get(name, Allowed())
    rule = allowed.describe(whole)

    def refused() -> ConfigError:
        return ConfigError(f"{name} must be {rule}, not {value!r}.")

    # bool is an int in Python, but `epochs = true` is a mistake, not 1
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise refused()
    if isinstance(value, float) and not math.isfinite(value):
        raise refused()
    if whole and value != int(value):
        raise refused()
    number = int(value) if whole else float(value)
    if not allowed.admits(number):
        raise refused()
    if whole and allowed.high is None and abs(number) > _LARGEST_WHOLE:
        raise ConfigError(f"{name} must be {rule} (at most {_LARGEST_WHOLE}), not {value!r}.")
    return number


def _checked(name: str, default: Any, value: Any) -> Any:
    """``value`` for key ``name``, checked against the type of its default and its :data:`ALLOWED` range.

    Args:
        name: the dotted key.
        default: the key's default, which gives its type.
        value: the value from the file or the command line.

    Returns:
        The value in the key's type.

    Raises:
        ConfigError: naming the key, the value and what is allowed.
    """
    if name in NUMBER_OR_WORD:
        word, rule = NUMBER_OR_WORD[name]
        if isinstance(value, str) and value.lower() == word:
            return word
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return _checked_number(name, False, value)
            except ConfigError:
                pass
        raise ConfigError(f"{name} must be {rule} or '{word}', not {value!r}.")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, not {value!r}.")
        return value
    if isinstance(default, (int, float)):
        return _checked_number(name, isinstance(default, int), value)
    if isinstance(default, list):
        whole = isinstance(default[0], int)
        items = f"{len(default)} {'whole numbers' if whole else 'numbers'}"
        if name in ALLOWED and ALLOWED[name].bounds():
            items += f", each {ALLOWED[name].bounds()}"
        if not isinstance(value, (list, tuple)) or len(value) != len(default):
            raise ConfigError(f"{name} must be a list of {items}, not {value!r}.")
        try:
            return [_checked_number(name, whole, item) for item in value]
        except ConfigError:
            raise ConfigError(f"{name} must be a list of {items}, not {list(value)!r}.") from None
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, not {value!r}.")
        if name in WORD_CHOICES:
            if value.lower() not in WORD_CHOICES[name]:
                raise ConfigError(f"{name} must be one of {', '.join(WORD_CHOICES[name])}, not {value!r}.")
            return value.lower()
        try:
            value.encode("utf-8")  # the run saves its config as UTF-8 TOML
        except UnicodeEncodeError:
            raise ConfigError(
                f"{name} must be UTF-8 text, not {value!r} (a name that is not UTF-8: rename it, or link to it from a "
                f"UTF-8 name)."
            ) from None
        return value
    return value
