"""Training of UniMed: prompt sampling and the one-stage joint objective."""

from unimed_core.training.objective import JointObjective
from unimed_core.training.prompt_sampling import mask_to_box, sample_prompts

__all__ = ["JointObjective", "mask_to_box", "sample_prompts"]
