"""JointIteration: one optimiser step of the joint objective as MONAI's engine calls it, with gradient clipping."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from unimed_core.model.targets import Target
from unimed_core.training.joint_iteration import JointIteration, prepare_joint_batch


def _batch() -> dict:
    image = torch.arange(2 * 4, dtype=torch.float32).reshape(2, 1, 2, 2, 1)
    targets = [Target(image_labels=torch.tensor([1.0, 0.0])), Target()]
    return {"image": image, "targets": targets}


class _Objective:
    """Stand-in for JointObjective: records what it was called with and returns a large loss."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __call__(self, network, images, targets, generator):
        self.calls.append((network.training, images.shape, len(targets), torch.rand(1, generator=generator).item()))
        out = network(images.flatten(1))
        total = 1000.0 * (out**2).sum()
        return total, {"term": total * 0.5}


def _engine(grad_clip_lr: float = 1.0) -> SimpleNamespace:
    torch.manual_seed(0)
    network = torch.nn.Linear(4, 3)
    return SimpleNamespace(
        state=SimpleNamespace(device=torch.device("cpu")),
        non_blocking=False,
        network=network.eval(),
        optimizer=torch.optim.SGD(network.parameters(), lr=grad_clip_lr),
        loss_function=_Objective(),
        amp=False,
    )


def _parameters(engine) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in engine.network.parameters()])


def test_prepare_joint_batch():
    images, targets = prepare_joint_batch(_batch(), "cpu")
    assert images.shape == (2, 1, 2, 2, 1) and len(targets) == 2
    assert targets[0].image_labels.tolist() == [1.0, 0.0] and targets[1].image_labels is None


def test_iteration_steps_the_optimiser_with_clipped_gradients():
    clip = 0.01
    engine = _engine()
    before = _parameters(engine)
    output = JointIteration(seed=3, grad_clip=clip)(engine, _batch())
    assert set(output) == {"loss", "image", "term"}
    assert not output["loss"].requires_grad and output["image"].shape == (2, 1, 2, 2, 1)
    assert engine.loss_function.calls[0][:3] == (True, (2, 1, 2, 2, 1), 2)  # network put in train mode
    step = (_parameters(engine) - before).norm()
    assert 0 < step <= clip * 1.0001  # SGD with lr 1: the step is the clipped gradient

    unclipped = _engine()
    before = _parameters(unclipped)
    JointIteration(seed=3, grad_clip=0.0)(unclipped, _batch())
    assert (_parameters(unclipped) - before).norm() > 100 * clip


def test_generator_is_seeded_and_advances():
    first, second = _engine(), _engine()
    a, b = JointIteration(seed=7), JointIteration(seed=7)
    a(first, _batch())
    a(first, _batch())
    b(second, _batch())
    draws_a = [c[3] for c in first.loss_function.calls]
    assert draws_a[0] == second.loss_function.calls[0][3]  # same seed, same draws
    assert draws_a[0] != draws_a[1]  # one generator for the run, not reseeded per step


@pytest.mark.parametrize("grad_clip", [-1.0, -1e-9])
def test_bad_grad_clip(grad_clip):
    with pytest.raises(ValueError, match="grad_clip must be >= 0"):
        JointIteration(grad_clip=grad_clip)
