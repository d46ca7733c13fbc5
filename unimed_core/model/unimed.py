"""UniMed: one shared encoder, a decomposed decoder and a composed decoder (DESIGN.md §1).

The model is assembled from injected parts (STYLE.md §1, like MONAI's ``VISTA3D(image_encoder, class_head,
point_head)``); :mod:`unimed_core.model.factory` names the variants. It owns the one token embedding table that
the prompt encoder (input), the decomposed decoder's class scores and the composed decoder (input and output)
share. ``forward`` has no task switch (STYLE.md §5): it computes what its inputs ask for, and the objective picks
loss terms by what is present.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from monai.networks.utils import pixelshuffle
from torch import nn

from unimed_core.model.checks import require_positive_ints
from unimed_core.model.composed_decoder import ComposedDecoder
from unimed_core.model.decomposed_decoder import DecomposedDecoder
from unimed_core.model.inputs import PromptBatch
from unimed_core.model.outputs import ComposedOutput, DecomposedOutput, UniMedOutput
from unimed_core.model.pixel_decoder import PixelDecoder3D
from unimed_core.model.prompt_encoder import PromptEncoder

__all__ = ["ReconstructionHead", "UniMed"]


class ReconstructionHead(nn.Module):
    """Linear head for masked volume modelling, as MAE's: a 1×1×1 convolution from ``E`` to the ``stride³`` voxels
    each embedding covers, then a pixel shuffle (MONAI ``pixelshuffle``) back to the input grid.

    Deliberately weak, so the reconstruction has to come from the encoder's features, and cheap: a 3×3×3
    convolution at the stride of ``E`` would cost more than the rest of the small model on a CPU.

    Args:
        embed_dim: channels of ``E``.
        stride: stride of ``E`` relative to the input (the upsampling factor).
        out_channels: image channels to reconstruct.

    Example:
        >>> head = ReconstructionHead(16, stride=2)
        >>> tuple(head(torch.zeros(1, 16, 8, 8, 8)).shape)
        (1, 1, 16, 16, 16)
    """

    def __init__(self, embed_dim: int, stride: int, out_channels: int = 1) -> None:
        super().__init__()
        require_positive_ints(embed_dim=embed_dim, stride=stride, out_channels=out_channels)
        self.stride = stride
        self.proj = nn.Conv3d(embed_dim, out_channels * stride**3, kernel_size=1)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        x = self.proj(embeddings)
        return pixelshuffle(x, spatial_dims=3, scale_factor=self.stride) if self.stride > 1 else x


class UniMed(nn.Module):
    """The UniMed network.

    Args:
        encoder: image encoder returning multi-scale features, with ``in_channels``, ``out_channels``, ``strides``
            (e.g. :class:`~unimed_core.model.encoder.ConvEncoder3D`).
        pixel_decoder: :class:`PixelDecoder3D` built on the encoder's channels and strides.
        decomposed_decoder: :class:`DecomposedDecoder`.
        composed_decoder: :class:`ComposedDecoder`.
        prompt_encoder: :class:`PromptEncoder`.
        vocab: the shared ``Vocabulary``; every part must have been built with the same one.
        embed_dim: width d of the token table, ``E`` and the queries.
        reconstruction_head: head giving (B, 1, D, H, W) from ``E`` for masked volume modelling, or None (then
            ``volume_mask`` may not be given).
        image_evidence: fuses the image query's logits with the class tokens' masks
            (:class:`~unimed_core.model.image_evidence.ImageEvidence`), or None for the image query alone.
        fine_class_head: refines the class tokens' masks to the input grid
            (:class:`~unimed_core.model.fine_class_head.FineClassHead`), or None to keep them on ``E``'s grid.
        dense_class_head: per-voxel class logits added to the class tokens' masks on the input grid
            (:class:`~unimed_core.model.dense_class_head.DenseClassHead`), or None.

    Example:
        >>> from unimed_core.model.factory import unimed_small
        >>> model = unimed_small()
        >>> out = model(torch.zeros(1, 1, 32, 32, 32))
        >>> tuple(out.decomposed.mask_logits.shape)
        (1, 17, 16, 16, 16)
    """

    def __init__(
        self,
        encoder: nn.Module,
        pixel_decoder: PixelDecoder3D,
        decomposed_decoder: DecomposedDecoder,
        composed_decoder: ComposedDecoder,
        prompt_encoder: PromptEncoder,
        vocab,
        embed_dim: int,
        reconstruction_head: nn.Module | None = None,
        image_evidence: nn.Module | None = None,
        fine_class_head: nn.Module | None = None,
        dense_class_head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        require_positive_ints(embed_dim=embed_dim)
        for name in ("in_channels", "out_channels", "strides"):
            if not hasattr(encoder, name):
                raise ValueError(f"encoder must expose {name!r} (like ConvEncoder3D)")
        if tuple(pixel_decoder.in_channels) != tuple(encoder.out_channels):
            raise ValueError(
                f"pixel_decoder in_channels {pixel_decoder.in_channels} != encoder out_channels {encoder.out_channels}"
            )
        if tuple(pixel_decoder.strides) != tuple(encoder.strides):
            raise ValueError(f"pixel_decoder strides {pixel_decoder.strides} != encoder strides {encoder.strides}")
        parts = {
            "pixel_decoder": pixel_decoder,
            "decomposed_decoder": decomposed_decoder,
            "composed_decoder": composed_decoder,
            "prompt_encoder": prompt_encoder,
        }
        for name, part in parts.items():
            if part.embed_dim != embed_dim:
                raise ValueError(f"{name}.embed_dim is {part.embed_dim}, expected embed_dim={embed_dim}")
            part_vocab = getattr(part, "vocab", vocab)
            if part_vocab is not vocab and (
                part_vocab.size != vocab.size or tuple(part_vocab.class_names) != tuple(vocab.class_names)
            ):
                raise ValueError(f"{name} was built with a different vocabulary ({part_vocab!r} vs {vocab!r})")
        if decomposed_decoder.num_levels != len(pixel_decoder.level_strides):
            raise ValueError(
                f"decomposed_decoder attends {decomposed_decoder.num_levels} levels, pixel_decoder gives "
                f"{len(pixel_decoder.level_strides)}"
            )
        self.encoder = encoder
        self.pixel_decoder = pixel_decoder
        self.decomposed_decoder = decomposed_decoder
        self.composed_decoder = composed_decoder
        self.prompt_encoder = prompt_encoder
        self.reconstruction_head = reconstruction_head
        self.image_evidence = image_evidence
        self.fine_class_head = fine_class_head
        self.dense_class_head = dense_class_head
        self.vocab = vocab
        self.embed_dim = embed_dim
        self.token_embedding = nn.Embedding(vocab.size, embed_dim)
        self.register_buffer("class_token_ids", vocab.class_token_ids.clone(), persistent=False)

    # ------------------------------------------------------------------ properties
    @property
    def embedding_stride(self) -> int:
        """Stride of ``E`` (and of every mask logit map) relative to the input."""
        return self.pixel_decoder.embedding_stride

    @property
    def input_divisor(self) -> int:
        """Every spatial size of the input must be a multiple of this (the encoder's coarsest stride)."""
        return int(self.encoder.strides[-1])

    # ------------------------------------------------------------------ checks
    def _check_image(self, image: torch.Tensor) -> None:
        if not isinstance(image, torch.Tensor) or image.ndim != 5:
            raise ValueError(f"image must be a (B, C, D, H, W) tensor, got shape {tuple(getattr(image, 'shape', ()))}")
        if image.shape[1] != self.encoder.in_channels:
            raise ValueError(f"image must have {self.encoder.in_channels} channel(s), got shape {tuple(image.shape)}")
        k = self.input_divisor
        if any(s % k or s == 0 for s in image.shape[2:]):
            raise ValueError(f"image spatial size must be a positive multiple of {k}, got shape {tuple(image.shape)}")

    # ------------------------------------------------------------------ parts
    def encode(self, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-voxel embeddings ``E`` (B, d, D/s, H/s, W/s) and the transformer levels (coarsest first)."""
        self._check_image(image)
        return self.pixel_decoder(self.encoder(image))

    def _prompt_queries(
        self, prompts: PromptBatch | None, batch: int
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if prompts is None:
            return None, None
        if not isinstance(prompts, PromptBatch):
            raise ValueError(f"prompts must be a PromptBatch, got {type(prompts).__name__}")
        if prompts.tokens.shape[0] != batch:
            raise ValueError(f"prompts have batch {prompts.tokens.shape[0]}, image has {batch}")
        return self.prompt_encoder(prompts.tokens, self.token_embedding)

    def decode(
        self, embeddings: torch.Tensor, levels: list[torch.Tensor], prompts: PromptBatch | None = None
    ) -> DecomposedOutput:
        """Run the prompt encoder and the decomposed decoder on encoded features."""
        return self.decode_with_class_masks(embeddings, levels, prompts)[0]

    def decode_with_class_masks(
        self,
        embeddings: torch.Tensor,
        levels: list[torch.Tensor],
        prompts: PromptBatch | None = None,
        image: torch.Tensor | None = None,
    ) -> tuple[DecomposedOutput, torch.Tensor]:
        """:meth:`decode`, plus the class tokens' masks (:meth:`class_masks`) it computed on the way, for callers
        that need them too (the class-mask loss, the predictor's label volume). ``image``: the input ``E`` was
        encoded from; with it the class masks are on its grid (:meth:`class_masks`)."""
        queries, present = self._prompt_queries(prompts, embeddings.shape[0])
        anchors, anchored = None, None
        if queries is not None:
            queries, anchors, anchored = self.prompt_encoder.ground(queries, prompts.tokens, embeddings)
        class_embed = self.token_embedding(self.class_token_ids)
        decomposed = self.decomposed_decoder(levels, embeddings, class_embed, queries, present, anchors, anchored)
        class_masks = self.class_masks(embeddings, image)
        if self.image_evidence is not None:
            decomposed = dataclasses.replace(
                decomposed, image_logits=self.image_evidence(decomposed.image_logits, class_masks)
            )
        return decomposed, class_masks

    def class_masks(self, embeddings: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, D', H', W') mask logits of every class token (no decoder layers: the token itself as query);
        (B, C, D, H, W), on the grid of ``image``, when the model has a ``fine_class_head`` or a ``dense_class_head``
        and ``image`` is given (the latter's per-voxel logits added).

        Trained against each class's semantic mask wherever a sample has masks, this dense term teaches ``E`` and
        the shared class embeddings to separate the classes voxel by voxel from the first steps, which the
        set-matched queries (Mask2Former's slow start) and the class prompts then build on.
        """
        b = embeddings.shape[0]
        class_embed = self.token_embedding(self.class_token_ids).expand(b, -1, -1)
        coarse = self.decomposed_decoder.masks_from_hidden(class_embed, embeddings)
        if image is None or (self.fine_class_head is None and self.dense_class_head is None):
            return coarse
        if self.fine_class_head is None:
            masks = F.interpolate(coarse, size=image.shape[2:], mode="trilinear", align_corners=False)
        else:
            masks = self.fine_class_head(coarse, class_embed, embeddings, image)
        if self.dense_class_head is not None:
            masks = masks + self.dense_class_head(embeddings, image)
        return masks

    def _memory_mask(self, decomposed: DecomposedOutput, prompts: PromptBatch | None) -> torch.Tensor | None:
        """(B, Q) bool memory mask hiding absent prompt queries from the composed decoder, or None."""
        if prompts is None or decomposed.layout.num_prompt == 0:
            return None
        mask = torch.ones(decomposed.queries.shape[:2], dtype=torch.bool, device=decomposed.queries.device)
        mask[:, decomposed.layout.prompt] = (prompts.tokens != self.vocab.pad).any(-1)
        return mask

    def _slot_masks(self, hidden: torch.Tensor, positions: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, T, D', H', W') masks from the hidden states at ``positions`` (B, T) bool, zeros elsewhere."""
        b, t = positions.shape
        out = embeddings.new_zeros((b, t, *embeddings.shape[2:]))
        for i in range(b):
            idx = positions[i].nonzero().flatten()
            if idx.numel():
                out[i, idx] = self.decomposed_decoder.masks_from_hidden(hidden[i : i + 1, idx], embeddings[i : i + 1])[
                    0
                ]
        return out

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        image: torch.Tensor,
        prompts: PromptBatch | None = None,
        sequences: torch.Tensor | None = None,
        volume_mask: torch.Tensor | None = None,
    ) -> UniMedOutput:
        """One training forward pass.

        Args:
            image: (B, C, D, H, W), every spatial size a multiple of :attr:`input_divisor` (16).
            prompts: P prompts per sample, or None (automatic mode only).
            sequences: (B, T) long target sequences for teacher forcing (``BOS task ... EOS PAD*``), or None.
            volume_mask: (B, 1, D, H, W) bool, True for voxels hidden from the encoder for masked volume
                modelling, or None.

        Returns:
            a :class:`UniMedOutput`; ``composed`` / ``reconstruction`` are None when their input is None.
        """
        self._check_image(image)
        if prompts is not None and (not isinstance(prompts, PromptBatch) or prompts.tokens.shape[0] != image.shape[0]):
            self._prompt_queries(prompts, image.shape[0])  # raises with the reason, before any heavy work
        embeddings, levels = self.encode(image)
        decomposed, class_masks = self.decode_with_class_masks(embeddings, levels, prompts, image)

        composed = None
        if sequences is not None:
            if not isinstance(sequences, torch.Tensor) or sequences.ndim != 2 or sequences.shape[0] != image.shape[0]:
                raise ValueError(
                    f"sequences must be (B={image.shape[0]}, T), got {tuple(getattr(sequences, 'shape', ()))}"
                )
            if sequences.dtype != torch.long or (
                sequences.numel() and (sequences.min() < 0 or sequences.max() >= self.vocab.size)
            ):
                raise ValueError(f"sequences must be long token ids in [0, {self.vocab.size})")
            hidden, logits = self.composed_decoder(
                sequences, decomposed.queries, self.token_embedding, self._memory_mask(decomposed, prompts)
            )
            positions = sequences == self.vocab.mask
            masks = self._slot_masks(hidden, positions, embeddings) if bool(positions.any()) else None
            composed = ComposedOutput(token_logits=logits, mask_logits=masks, mask_positions=positions)

        reconstruction = None
        if volume_mask is not None:
            if self.reconstruction_head is None:
                raise ValueError("volume_mask was given but the model has no reconstruction_head")
            if volume_mask.shape != (image.shape[0], 1, *image.shape[2:]):
                raise ValueError(
                    f"volume_mask must be (B, 1, D, H, W) = {(image.shape[0], 1, *image.shape[2:])}, got "
                    f"{tuple(volume_mask.shape)}"
                )
            hidden_image = image.masked_fill(volume_mask.to(torch.bool), 0.0)
            masked_embeddings, _ = self.encode(hidden_image)
            reconstruction = self.reconstruction_head(masked_embeddings)

        return UniMedOutput(
            decomposed=decomposed,
            composed=composed,
            reconstruction=reconstruction,
            embedding_stride=self.embedding_stride,
            class_mask_logits=class_masks,
        )

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def generate(
        self,
        embeddings: torch.Tensor,
        decomposed: DecomposedOutput,
        task: int,
        grammar,
        max_length: int,
        prompts: PromptBatch | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Generate one task's sequences and decode the mask of every MASK slot.

        Args:
            embeddings: ``E`` from :meth:`encode`.
            decomposed: :meth:`decode`'s output on the same ``E``.
            task: the task token id (``vocab.cls``, ``vocab.det`` or ``vocab.seg``).
            grammar: a ``SequenceGrammar`` of this model's vocabulary.
            max_length: most tokens per sequence.
            prompts: the prompts given to :meth:`decode`, so absent ones are hidden from the composed decoder.

        Returns:
            ``tokens`` (B, T'), ``token_probs`` (B, T'), and per sample a (M_b, D', H', W') tensor of mask logits,
            one per MASK token in order of appearance.
        """
        if task not in self.vocab.task_tokens:
            raise ValueError(f"task must be one of the task tokens {self.vocab.task_tokens}, got {task!r}")
        tokens, hidden, probs = self.composed_decoder.generate(
            decomposed.queries,
            self.token_embedding,
            grammar,
            task,
            max_length,
            self._memory_mask(decomposed, prompts),
        )
        masks = []
        for i in range(tokens.shape[0]):
            idx = (tokens[i] == self.vocab.mask).nonzero().flatten()
            masks.append(self.decomposed_decoder.masks_from_hidden(hidden[i : i + 1, idx], embeddings[i : i + 1])[0])
        return tokens, probs, masks
