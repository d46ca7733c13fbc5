"""UniMed networks and their written contracts (DESIGN.md §1; STYLE.md §1, §4)."""

from unimed_core.model.composed_decoder import ComposedDecoder
from unimed_core.model.decomposed_decoder import DecomposedDecoder
from unimed_core.model.encoder import ConvEncoder3D, SwinEncoder3D
from unimed_core.model.factory import build_unimed, unimed_base, unimed_small
from unimed_core.model.inputs import PromptBatch
from unimed_core.model.outputs import ComposedOutput, DecomposedOutput, QueryLayout, UniMedOutput
from unimed_core.model.pixel_decoder import PixelDecoder3D
from unimed_core.model.position import FourierEncoding, voxel_centres
from unimed_core.model.prompt_encoder import PromptEncoder
from unimed_core.model.targets import Target
from unimed_core.model.unimed import ReconstructionHead, UniMed

__all__ = [
    "ComposedDecoder",
    "ComposedOutput",
    "ConvEncoder3D",
    "DecomposedDecoder",
    "DecomposedOutput",
    "FourierEncoding",
    "PixelDecoder3D",
    "PromptBatch",
    "PromptEncoder",
    "QueryLayout",
    "ReconstructionHead",
    "SwinEncoder3D",
    "Target",
    "UniMed",
    "UniMedOutput",
    "build_unimed",
    "unimed_base",
    "unimed_small",
    "voxel_centres",
]
