"""One training iteration of the joint objective, as MONAI's ``SupervisedTrainer`` runs it.

``SupervisedTrainer`` calls ``loss_function(pred, label)``; UniMed's objective needs the network, the image
and per-sample targets of mixed annotation levels instead, so the bundle passes :class:`JointIteration` as
the trainer's ``iteration_update`` and keeps everything else of MONAI's engine (handlers, checkpoints,
validation, TensorBoard, DDP) unchanged. The engine's ``loss_function`` is the :class:`JointObjective`.
"""

from __future__ import annotations

from typing import Any

import torch

from unimed_core.model.targets import target_to

__all__ = ["JointIteration", "prepare_joint_batch"]


def prepare_joint_batch(batch: dict, device: torch.device | str, non_blocking: bool = False) -> tuple:
    """Move a collated batch (``collate_samples``) to ``device``: ``(images, targets)``."""
    images = batch["image"].to(device, non_blocking=non_blocking)
    return images, [target_to(t, device) for t in batch["targets"]]


class JointIteration:
    """``iteration_update`` for ``monai.engines.SupervisedTrainer``.

    Mixed precision: on CUDA with ``engine.amp`` the forward runs under autocast, bfloat16 where supported (no
    loss scaling) else float16 with the engine's ``GradScaler``; on the CPU it runs in float32.

    Args:
        seed: seed of the generator that draws prompts, sequences and volume masks (per rank: ``seed + rank``).
        grad_clip: max gradient norm (0 disables).

    Returns (per iteration, into ``engine.state.output``): ``{"loss": total, "image": images, <term>: value}``.
    """

    def __init__(self, seed: int = 0, grad_clip: float = 1.0) -> None:
        if grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0, got {grad_clip}")
        self.seed, self.grad_clip = seed, grad_clip
        self._generator: torch.Generator | None = None

    @staticmethod
    def _rank() -> int:
        return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0

    def _gen(self) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed + self._rank())
        return self._generator

    def state_dict(self) -> dict:
        """The generator's state: checkpointed with the trainer, a resumed run draws what an uninterrupted one would."""
        return {"generator": self._gen().get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (saved by rank 0); other ranks derive their own stream from it."""
        generator = self._gen()
        generator.set_state(state["generator"])
        if self._rank():
            offset = int(torch.randint(0, 2**62, (1,), generator=generator))
            generator.manual_seed(offset + self._rank())

    def __call__(self, engine: Any, batchdata: dict) -> dict:
        images, targets = prepare_joint_batch(batchdata, engine.state.device, engine.non_blocking)
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=True)
        cuda_amp = engine.amp and images.device.type == "cuda"
        amp_kwargs = dict(getattr(engine, "amp_kwargs", None) or {})
        # bfloat16 where the GPU has it: float16 overflows in attention and set-matching costs (seen on an H200),
        # and bfloat16 needs no loss scaling.
        amp_kwargs.setdefault("dtype", torch.bfloat16 if cuda_amp and torch.cuda.is_bf16_supported() else torch.float16)
        with torch.autocast("cuda", enabled=cuda_amp, **amp_kwargs):
            total, terms = engine.loss_function(engine.network, images, targets, self._gen())
        scaler = getattr(engine, "scaler", None) if cuda_amp and amp_kwargs["dtype"] == torch.float16 else None
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.unscale_(engine.optimizer)
        else:
            total.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.grad_clip)
        if scaler is not None:
            scaler.step(engine.optimizer)
            scaler.update()
        else:
            engine.optimizer.step()
        return {"loss": total.detach(), "image": images, **{k: v.detach() for k, v in terms.items()}}
