"""Tests of unimed_core.training.objective.JointObjective, on a tiny real UniMed."""

import pytest
import torch

from unimed_core.label_map import LabelMap
from unimed_core.losses.matcher import HungarianMatcher
from unimed_core.losses.set_criterion import SetCriterion
from unimed_core.model.encoder import ConvEncoder3D
from unimed_core.model.factory import build_unimed
from unimed_core.model.targets import Target
from unimed_core.tokenizer.tokenizer import Tokenizer
from unimed_core.tokenizer.vocabulary import Vocabulary
from unimed_core.training.objective import JointObjective
from unimed_core.training.prompt_sampling import mask_to_box

S = 32
LABEL_MAP = LabelMap.default()
VOCAB = Vocabulary(LABEL_MAP.class_names, num_bins=32)
TOK = Tokenizer(VOCAB)
LIVER, CYST, TUMOR = (LABEL_MAP.class_index(n) for n in ("liver", "cyst", "tumor"))
SET_TERMS = {"loss_class", "loss_mask_bce", "loss_mask_dice", "loss_box"}


def _tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_unimed(
        ConvEncoder3D(1, channels=(8, 16, 16, 16), strides=(2, 2, 2, 2)),
        VOCAB,
        embed_dim=16,
        num_heads=2,
        num_decomposed_layers=2,
        num_composed_layers=1,
        num_latent_queries=6,
        max_sequence_length=64,
    )


def _objective(weights=None, **kw) -> JointObjective:
    criterion = SetCriterion(VOCAB.num_classes, HungarianMatcher())
    return JointObjective(criterion, TOK, {"mvm": 1.0} if weights is None else weights, label_map=LABEL_MAP, **kw)


def _ellipsoid(centre, radii) -> torch.Tensor:
    grid = torch.stack(torch.meshgrid(*[torch.arange(S).float() + 0.5] * 3, indexing="ij"))
    c, r = torch.tensor(centre).view(3, 1, 1, 1), torch.tensor(radii).view(3, 1, 1, 1)
    return (((grid - c) / r) ** 2).sum(0) <= 1


def _volume(shift: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A CT-like patch: a liver ellipsoid with a dark tumor inside, and a bright cyst elsewhere."""
    semantic = torch.zeros(S, S, S, dtype=torch.long)
    semantic[_ellipsoid((14 + shift, 15, 16), (9, 11, 10))] = LABEL_MAP.class_index_to_mask_id(LIVER)
    semantic[_ellipsoid((12 + shift, 13, 14), (3, 4, 3))] = LABEL_MAP.class_index_to_mask_id(TUMOR)
    semantic[_ellipsoid((27, 5 + shift, 26), (3, 3, 4))] = LABEL_MAP.class_index_to_mask_id(CYST)
    intensity = torch.tensor([0.0, 0.6, 0.0, 0.0, 0.0, 0.9, -0.6])
    g = torch.Generator().manual_seed(seed)
    image = intensity[semantic] + 0.05 * torch.randn(S, S, S, generator=g)
    return image[None], semantic


def _full_target(semantic: torch.Tensor, sequences=("seg", "det", "cls")) -> Target:
    classes = [LIVER, TUMOR, CYST]
    masks = torch.stack([semantic == LABEL_MAP.class_index_to_mask_id(c) for c in classes])
    labels = torch.tensor(classes)
    boxes = torch.stack([mask_to_box(m) for m in masks])
    image_labels = torch.zeros(VOCAB.num_classes)
    image_labels[[TUMOR, CYST]] = 1.0
    encoded = {
        "seg": TOK.encode_segmentation(classes),
        "det": TOK.encode_detection(boxes[1:], labels[1:].tolist()),
        "cls": TOK.encode_classification([TUMOR, CYST]),
    }
    return Target(
        semantic=semantic,
        instance_labels=labels,
        instance_masks=masks,
        instance_boxes=boxes,
        image_labels=image_labels,
        sequences=tuple(torch.tensor(encoded[s]) for s in sequences),
    )


def _mixed_batch() -> tuple[torch.Tensor, list[Target]]:
    images, targets = [], []
    for i in range(4):
        image, semantic = _volume(i % 2, seed=i)
        images.append(image)
        full = _full_target(semantic, sequences=("seg",))
        if i == 0:  # masks (and boxes), SEG sequence
            targets.append(full)
        elif i == 1:  # boxes only
            det = (torch.tensor(TOK.encode_detection(full.instance_boxes, full.instance_labels.tolist())),)
            targets.append(
                Target(instance_labels=full.instance_labels, instance_boxes=full.instance_boxes, sequences=det)
            )
        elif i == 2:  # image labels only
            cls = (torch.tensor(TOK.encode_classification([TUMOR, CYST])),)
            targets.append(Target(image_labels=full.image_labels, sequences=cls))
        else:  # unlabelled
            targets.append(Target())
    return torch.stack(images), targets


class _CountingModel(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, *args):
        self.calls += 1
        return self.model(*args)


def test_mixed_batch_gives_exactly_the_allowed_terms_in_one_forward():
    images, targets = _mixed_batch()
    model = _CountingModel(_tiny_model())
    total, terms = _objective()(model, images, targets, torch.Generator().manual_seed(0))
    assert model.calls == 1
    with torch.no_grad():
        num_aux = len(model.model(images).decomposed.aux)
    assert num_aux >= 1
    # the latent queries' set terms and the prompt queries' mask and class terms are deeply supervised
    prompt_terms = {"loss_prompt_mask_bce", "loss_prompt_mask_dice", "loss_prompt_class"}
    aux = {f"{k}_{i}" for k in SET_TERMS | prompt_terms for i in range(num_aux)}
    expected = (
        SET_TERMS
        | aux
        | {
            "loss_image",
            "loss_prompt_mask_bce",
            "loss_prompt_mask_dice",
            "loss_prompt_class",
            "loss_sequence",
            "loss_sequence_mask_bce",
            "loss_sequence_mask_dice",
            "loss_class_mask_bce",
            "loss_class_mask_dice",
            "loss_mvm",
        }
    )
    assert set(terms) == expected
    assert all(torch.isfinite(v) for v in terms.values())
    assert total.item() == pytest.approx(sum(v.item() for v in terms.values()), rel=1e-5)
    total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)  # every head reached, even where a term is absent
    assert sum(g.abs().sum() for g in grads) > 0


def test_class_masks_are_taught_only_where_masks_exist():
    """Boxes-only, image-label-only and unlabelled samples have no semantic mask: no class-mask term."""
    images, targets = _mixed_batch()
    model = _tiny_model()
    _, without_masks = _objective()(model, images[1:], targets[1:], torch.Generator().manual_seed(0))
    assert not any(k.startswith("loss_class_mask") for k in without_masks)
    _, with_masks = _objective()(model, images[:1], targets[:1], torch.Generator().manual_seed(0))
    assert {"loss_class_mask_bce", "loss_class_mask_dice"} <= set(with_masks)


def _perfect_class_mask_logits(images, targets):
    """(1, C, D', H', W') class-token mask logits of ±20 that agree with sample 0's semantic mask, and the
    indices of the classes that sample does not have."""
    logits = _tiny_model()(images[:1]).class_mask_logits.detach()
    ids = torch.tensor([LABEL_MAP.class_index_to_mask_id(c) or -1 for c in range(logits.shape[1])])
    small = torch.nn.functional.interpolate(targets[0].semantic[None, None].float(), size=logits.shape[2:])[0, 0]
    perfect = torch.where(small.long()[None, None] == ids.view(1, -1, 1, 1, 1), 20.0, -20.0)
    absent = [c for c in range(logits.shape[1]) if not (small == ids[c]).any()]
    return perfect, absent


def test_class_mask_term_falls_when_a_class_token_mask_matches_its_class():
    """The term scores the class-token masks against the semantic mask: perfect logits give a lower loss."""
    images, targets = _mixed_batch()
    objective = _objective()
    perfect, _ = _perfect_class_mask_logits(images, targets)
    g = torch.Generator().manual_seed(0)
    good = objective._class_mask_terms(perfect, targets[:1], g)
    bad = objective._class_mask_terms(-perfect, targets[:1], torch.Generator().manual_seed(0))
    assert good["loss_class_mask_dice"] < 0.2 < 0.8 < bad["loss_class_mask_dice"]


def test_class_mask_dice_skips_absent_classes_and_bce_does_not():
    """An absent class is taught by the BCE only: soft Dice against an empty mask would press every voxel down
    with a gradient near 1 and teach small findings "never"."""
    images, targets = _mixed_batch()
    objective = _objective()
    perfect, absent = _perfect_class_mask_logits(images, targets)
    assert absent, "the test needs a class the sample does not have"
    noisy = perfect.clone()
    noisy[:, absent] = 20.0  # absent classes claim every voxel
    base = objective._class_mask_terms(perfect, targets[:1], torch.Generator().manual_seed(0))
    worse = objective._class_mask_terms(noisy, targets[:1], torch.Generator().manual_seed(0))
    assert worse["loss_class_mask_dice"].item() == pytest.approx(base["loss_class_mask_dice"].item())
    assert worse["loss_class_mask_bce"] > base["loss_class_mask_bce"] + 1.0


def test_lesion_balanced_bce_weighs_a_lesions_voxels_as_much_as_the_rest():
    """Off by default; on, one term over the lesion classes present (tumour and cyst here), not the organs: a lesion
    mask that misses its few voxels costs half the term, as much as one that claims every other voxel."""
    images, targets = _mixed_batch()
    perfect, _ = _perfect_class_mask_logits(images, targets)
    assert "loss_class_mask_balanced" not in _objective()._class_mask_terms(perfect, targets[:1], None)
    objective = _objective(lesion_balanced_bce=True)
    assert objective._class_mask_terms(perfect, targets[:1], None)["loss_class_mask_balanced"] < 1e-6
    missed = perfect.clone()
    missed[:, TUMOR] = -20.0  # the tumour's voxels missed: its foreground half is 20, the mean over 2 lesions 5
    claims = perfect.clone()
    claims[:, TUMOR] = 20.0  # every voxel claimed: the background half is 20
    liver = perfect.clone()
    liver[:, LIVER] = -20.0  # organs are not in the term
    terms = [objective._class_mask_terms(x, targets[:1], None)["loss_class_mask_balanced"].item()
             for x in (missed, claims, liver)]  # fmt: skip
    assert terms[0] == pytest.approx(5.0, rel=0.01) and terms[1] == pytest.approx(5.0, rel=0.01)
    assert terms[2] < 1e-6


def test_prompt_masks_are_taught_at_every_decoder_layer():
    """The masked attention reads each layer's mask: the first prompt mask must be taught too (deep supervision),
    or it can keep a prompt from ever attending to its object."""
    images, targets = _mixed_batch()
    model = _tiny_model()
    _, terms = _objective()(model, images[:1], targets[:1], torch.Generator().manual_seed(0))
    num_aux = len(model(images[:1]).decomposed.aux)
    for i in range(num_aux):
        assert terms[f"loss_prompt_mask_dice_{i}"] > 0
    # the aux terms differ from the last layer's: they score other predictions, not a copy
    assert terms["loss_prompt_mask_dice_0"].item() != pytest.approx(terms["loss_prompt_mask_dice"].item())


def test_prompt_queries_learn_the_class_of_what_they_point_at():
    """A prompt always points at an object: its query's class target is that object's class, never "no object"
    (a collapse to "no object" emptied the trained model's liver clicks). Checked against the sampled prompts."""
    from unimed_core.training.prompt_sampling import sample_prompts

    images, targets = _mixed_batch()
    objective = _objective()
    tok = objective.tokenizer
    _, masks, valid, classes = sample_prompts(targets, tok, 4, images.shape[2:], torch.Generator().manual_seed(3),
                                              with_classes=True)  # fmt: skip
    assert valid.any() and torch.all((classes >= 0) == valid)
    for b, p in valid.nonzero().tolist():  # the prompted mask is made of objects of that class
        inst = targets[b].instance_masks[targets[b].instance_labels == classes[b, p]].any(0)
        assert torch.equal(masks[b, p] & ~inst, torch.zeros_like(masks[b, p]))
    model = _tiny_model()
    _, terms = objective(model, images, targets, torch.Generator().manual_seed(0))
    out = model(images).decomposed
    assert terms["loss_prompt_class"] > 0 and len([k for k in terms if k.startswith("loss_prompt_class_")]) == len(
        out.aux
    )
    # and the same draw without the classes is unchanged (the class term does not shift the random stream)
    again = sample_prompts(targets, tok, 4, images.shape[2:], torch.Generator().manual_seed(3))
    assert len(again) == 3 and torch.equal(again[1], masks) and torch.equal(again[2], valid)


def test_unlabelled_volumes_contribute_only_mvm():
    images, targets = _mixed_batch()
    model = _tiny_model()
    total, terms = _objective()(model, images[3:], targets[3:], torch.Generator().manual_seed(0))
    assert set(terms) == {"loss_mvm"}
    assert total.item() == pytest.approx(terms["loss_mvm"].item(), rel=1e-6)
    total, terms = _objective(weights={})(model, images[3:], targets[3:], torch.Generator().manual_seed(0))
    assert terms == {} and total.item() == 0.0
    total.backward()  # still a graph: nothing to learn, but nothing breaks


def test_weights_are_applied_by_term_and_group():
    objective = _objective({"class": 2.0, "loss_class_0": 0.5, "mvm": 0.25, "loss_sequence": 0.0})
    assert objective.weight("loss_class") == 2.0
    assert objective.weight("loss_class_0") == 0.5
    assert objective.weight("loss_class_1") == 2.0
    assert objective.weight("loss_mvm") == 0.25
    assert objective.weight("loss_box") == 1.0
    aux = _objective({"prompt_mask_bce": 5.0, "prompt_mask_bce_aux": 1.0})
    assert aux.weight("loss_prompt_mask_bce") == 5.0  # the last layer
    assert aux.weight("loss_prompt_mask_bce_2") == 1.0  # an earlier layer: the group's aux weight
    assert _objective({}).weight("loss_mvm") == 0.0  # MVM is opt-in
    images, targets = _mixed_batch()
    total, terms = objective(_tiny_model(), images, targets, torch.Generator().manual_seed(1))
    expected = sum(objective.weight(k) * v.item() for k, v in terms.items())
    assert "loss_sequence" in terms
    assert total.item() == pytest.approx(expected, rel=1e-5)


def test_deterministic_given_the_generator():
    images, targets = _mixed_batch()
    model = _tiny_model()
    a = _objective()(model, images, targets, torch.Generator().manual_seed(3))[1]
    b = _objective()(model, images, targets, torch.Generator().manual_seed(3))[1]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_arguments():
    criterion = SetCriterion(VOCAB.num_classes, HungarianMatcher())
    with pytest.raises(ValueError, match="SetCriterion"):
        JointObjective(HungarianMatcher(), TOK, {}, label_map=LABEL_MAP)
    with pytest.raises(ValueError, match="weights"):
        JointObjective(criterion, TOK, {"class": -1.0}, label_map=LABEL_MAP)
    with pytest.raises(ValueError, match="classes"):
        JointObjective(SetCriterion(3, HungarianMatcher()), TOK, {}, label_map=LABEL_MAP)
    with pytest.raises(ValueError, match="differ"):
        JointObjective(criterion, TOK, {}, label_map=LabelMap({0: "background", 1: "x"}))
    with pytest.raises(ValueError, match="images"):
        JointObjective(criterion, TOK, {}, label_map=LABEL_MAP)(_tiny_model(), torch.zeros(1, 1, S, S, S), [])


@pytest.mark.slow
def test_overfits_two_volumes():
    """JointObjective's total falls below 30% of its start on 2 volumes (about 50 steps, 30-60 s on 2 cores)."""
    torch.manual_seed(0)
    data = [_volume(shift, seed=10 + shift) for shift in (0, 2)]
    images = torch.stack([d[0] for d in data])
    targets = [_full_target(d[1]) for d in data]
    model = _tiny_model(seed=1)
    objective = _objective({"mvm": 1.0})
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    history = []
    # Bounded by steps, not seconds, so a busy machine slows the test down instead of failing it.
    for _ in range(150):
        total, terms = objective(model, images, targets, g)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append(total.item())
        if len(history) >= 10 and sum(history[-5:]) / 5 < 0.3 * history[0]:
            break
    assert len(terms) >= 11  # every kind of term took part
    assert sum(history[-5:]) / 5 < 0.3 * history[0], f"{len(history)} steps: {history[0]:.2f} -> {history[-5:]}"
