"""Embedding networks: the pretrained face ResNet (dlib's weights in Keras layers) and the from-scratch ResNets.

- ``face_resnet`` (:mod:`facetrip.models.face_embedder`): dlib's face-recognition ResNet,
  pretrained on about 3 million faces, fine-tuned end to end on aligned 150 x 150 chips.
- ``resnet_small`` and ``resnet50`` (:mod:`facetrip.models.resnet`): learned from scratch.

Keras is imported when a model is built, not when this package is imported.
"""

from __future__ import annotations

FACE_BACKBONE = "face_resnet"
BACKBONES = (FACE_BACKBONE, "resnet_small", "resnet50")
# Earlier names users may have in their configs.
BACKBONE_ALIASES = {"dlib_resnet": FACE_BACKBONE}
# Backbones that come with pretrained weights and read aligned face chips.
PRETRAINED_BACKBONES = (FACE_BACKBONE,)


def resolve_backbone(name: str) -> str:
    """The canonical backbone name; ValueError listing the choices for an unknown one."""
    canonical = BACKBONE_ALIASES.get(str(name).lower(), str(name).lower())
    if canonical not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}: choose one of {', '.join(BACKBONES)}.")
    return canonical


def build_embedding_model(
    input_shape: tuple[int, int, int] = (56, 46, 1),
    embedding_dim: int = 128,
    backbone: str = "resnet_small",
    width: int = 32,
    dropout: float = 0.0,
    weight_decay: float = 0.0,
    head: str = "pool",
    freeze: str = "none",
    name: str = "facetrip_embedder",
):
    """A network from (B, H, W, C) images in [0, 1] to (B, embedding_dim) unit embeddings.

    Args:
        input_shape: (height, width, channels); ``face_resnet`` needs (150, 150, 3) chips.
        embedding_dim: size of the embedding.
        backbone: ``face_resnet`` (pretrained), ``resnet_small`` or ``resnet50``.
        width: channels of the first ``resnet_small`` stage.
        dropout: dropout rate before the projection.
        weight_decay: L2 penalty on kernels (added to the loss).
        head: ``pool`` or ``flatten``, for the from-scratch backbones.
        freeze: ``face_resnet`` only: none, stem, stage1 .. stage5, all.
        name: model name.

    Returns:
        keras.Model.

    Raises:
        ValueError: an unknown backbone, head or freeze level, or an input shape the
            backbone cannot take.
    """
    backbone = resolve_backbone(backbone)
    if backbone == FACE_BACKBONE:
        from facetrip.models.face_embedder import build_face_embedder
        from facetrip.models.face_resnet import FACE_CHIP_SIZE

        if tuple(input_shape) != (FACE_CHIP_SIZE, FACE_CHIP_SIZE, 3):
            raise ValueError(
                f"The face_resnet backbone reads {FACE_CHIP_SIZE}x{FACE_CHIP_SIZE} RGB face chips, not "
                f"{'x'.join(map(str, input_shape))} images: set data.image_size = [{FACE_CHIP_SIZE}, {FACE_CHIP_SIZE}], "
                f"data.channels = 3 and data.face_chips = true."
            )
        return build_face_embedder(embedding_dim, dropout, weight_decay, freeze, name=name)
    if freeze != "none":
        raise ValueError(f"--freeze applies to the pretrained face_resnet backbone only, not to {backbone}.")
    from facetrip.models.resnet import build_scratch_model

    return build_scratch_model(input_shape, embedding_dim, backbone, width, dropout, weight_decay, head, name)
