"""Named UniMed variants (STYLE.md §1, like MONAI's ``vista3d132()``): depths and widths live here only.

- :func:`unimed_small`: a residual conv encoder and d = 64, sized to train on a 2-core CPU;
- :func:`unimed_base`: MONAI's Swin encoder and d = 192, for GPUs.

Both derive their vocabulary from the one label map (DESIGN.md §2).
"""

from __future__ import annotations

from unimed_core.label_map import LabelMap
from unimed_core.model.composed_decoder import ComposedDecoder
from unimed_core.model.decomposed_decoder import DecomposedDecoder
from unimed_core.model.dense_class_head import DenseClassHead
from unimed_core.model.encoder import ConvEncoder3D, SwinEncoder3D
from unimed_core.model.fine_class_head import FineClassHead
from unimed_core.model.image_evidence import ImageEvidence
from unimed_core.model.pixel_decoder import PixelDecoder3D
from unimed_core.model.prompt_encoder import PromptEncoder
from unimed_core.model.unimed import ReconstructionHead, UniMed
from unimed_core.tokenizer import Vocabulary

__all__ = ["build_unimed", "unimed_base", "unimed_small", "unimed_tiny"]


def build_unimed(
    encoder,
    vocab: Vocabulary,
    embed_dim: int,
    num_heads: int,
    num_decomposed_layers: int,
    num_composed_layers: int,
    num_latent_queries: int,
    max_sequence_length: int = 256,
    output_stride: int = 2,
    dropout: float = 0.0,
    image_evidence: bool = True,
    fine_class_masks: bool = True,
    fine_refine_units: int = 0,
    dense_class_head: bool = False,
) -> UniMed:
    """Assemble a UniMed around ``encoder`` with matching pixel decoder, decoders, prompt encoder and heads.

    Args:
        encoder: an encoder exposing ``in_channels``, ``out_channels`` and ``strides``.
        vocab: the shared vocabulary.
        embed_dim: width d.
        num_heads: attention heads in every transformer.
        num_decomposed_layers: layers of the masked-attention decoder.
        num_composed_layers: layers of the causal token decoder.
        num_latent_queries: N latent queries.
        max_sequence_length: longest token sequence of the composed decoder.
        output_stride: stride of ``E``.
        dropout: dropout of the transformers.
        image_evidence: image labels also read the class tokens' masks (``ImageEvidence``).
        fine_class_masks: the class tokens' masks are refined to the input grid (``FineClassHead``).
        fine_refine_units: residual units of that head at the input grid (``FineClassHead.refine_units``).
        dense_class_head: per-voxel class logits from ``E`` and the image are added to those masks
            (``DenseClassHead``).
    """
    pixel_decoder = PixelDecoder3D(encoder.out_channels, encoder.strides, embed_dim, output_stride=output_stride)
    return UniMed(
        encoder=encoder,
        pixel_decoder=pixel_decoder,
        decomposed_decoder=DecomposedDecoder(
            vocab,
            embed_dim,
            num_layers=num_decomposed_layers,
            num_heads=num_heads,
            num_latent_queries=num_latent_queries,
            num_levels=len(pixel_decoder.level_strides),
            dropout=dropout,
        ),
        composed_decoder=ComposedDecoder(
            vocab,
            embed_dim,
            num_layers=num_composed_layers,
            num_heads=num_heads,
            max_length=max_sequence_length,
            dropout=dropout,
        ),
        prompt_encoder=PromptEncoder(vocab, embed_dim, num_heads=num_heads),
        vocab=vocab,
        embed_dim=embed_dim,
        reconstruction_head=ReconstructionHead(embed_dim, pixel_decoder.embedding_stride, encoder.in_channels),
        image_evidence=ImageEvidence(len(vocab.class_names)) if image_evidence else None,
        fine_class_head=(
            FineClassHead(embed_dim, encoder.in_channels, refine_units=fine_refine_units) if fine_class_masks else None
        ),
        dense_class_head=(
            DenseClassHead(embed_dim, len(vocab.class_names), encoder.in_channels) if dense_class_head else None
        ),
    )


def unimed_small(
    label_map: LabelMap | None = None,
    num_bins: int = 128,
    num_latent_queries: int = 16,
    fine_refine_units: int = 0,
    dense_class_head: bool = True,
) -> UniMed:
    """The CPU variant: ``ConvEncoder3D`` (16, 32, 64, 128), two residual units per stage, d = 64, 3 + 2 layers,
    4 heads.

    Args:
        label_map: the label map; default ``LabelMap.default()`` (the bundle's).
        num_bins: coordinate bins per axis.
        num_latent_queries: N latent queries.
        fine_refine_units: residual units of the class masks' head at the input grid.
        dense_class_head: per-voxel class logits added to the class masks (``DenseClassHead``); on since bundle
            0.5.0, whose weights hold it (runs from before it are rebuilt without: ``benchmarks.learning_curve``).

    Example:
        >>> model = unimed_small()
        >>> model.embed_dim, model.embedding_stride
        (64, 2)
    """
    label_map = LabelMap.default() if label_map is None else label_map
    return build_unimed(
        ConvEncoder3D(in_channels=1, channels=(16, 32, 64, 128), strides=(2, 2, 2, 2), num_res_units=2),
        Vocabulary.from_label_map(label_map, num_bins),
        embed_dim=64,
        num_heads=4,
        num_decomposed_layers=3,
        num_composed_layers=2,
        num_latent_queries=num_latent_queries,
        fine_refine_units=fine_refine_units,
        dense_class_head=dense_class_head,
    )


def unimed_tiny(
    label_map: LabelMap | None = None, num_bins: int = 16, num_latent_queries: int = 4, max_sequence_length: int = 64
) -> UniMed:
    """A few channels wide, for tests and smoke runs of the machinery (it learns little): (8, 8, 16, 16), d = 16.

    Example:
        >>> unimed_tiny().embed_dim
        16
    """
    label_map = LabelMap.default() if label_map is None else label_map
    return build_unimed(
        ConvEncoder3D(in_channels=1, channels=(8, 8, 16, 16), strides=(2, 2, 2, 2)),
        Vocabulary.from_label_map(label_map, num_bins),
        embed_dim=16,
        num_heads=2,
        num_decomposed_layers=1,
        num_composed_layers=1,
        num_latent_queries=num_latent_queries,
        max_sequence_length=max_sequence_length,
    )


def unimed_base(
    label_map: LabelMap | None = None,
    num_bins: int = 128,
    num_latent_queries: int = 32,
    feature_size: int = 48,
    use_checkpoint: bool = False,
) -> UniMed:
    """The GPU variant: ``SwinEncoder3D`` (feature size 48), d = 192, 6 + 6 layers, 8 heads.

    Args:
        label_map: the label map; default ``LabelMap.default()`` (the bundle's).
        num_bins: coordinate bins per axis.
        num_latent_queries: N latent queries.
        feature_size: Swin patch-embedding width (levels have 1, 2, 4, 8 times it).
        use_checkpoint: gradient checkpointing in the Swin stages.
    """
    label_map = LabelMap.default() if label_map is None else label_map
    return build_unimed(
        SwinEncoder3D(in_channels=1, feature_size=feature_size, use_checkpoint=use_checkpoint),
        Vocabulary.from_label_map(label_map, num_bins),
        embed_dim=192,
        num_heads=8,
        num_decomposed_layers=6,
        num_composed_layers=6,
        num_latent_queries=num_latent_queries,
    )
