"""NonFiniteGuard: a NaN or inf in the embeddings, the loss or a gradient stops (or skips) the step it appears in."""

import copy
import csv
import math
import pickle
import re
import warnings

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from lightning_margin import MarginModule
from lightning_margin.callbacks.nonfinite_diagnostics import (
    NonFiniteError,
    describe_head,
    embedding_statistics,
    nonfinite_parameters,
)
from lightning_margin.callbacks.nonfinite_guard import NonFiniteGuard
from lightning_margin.heads import create_head
from lightning_margin.parallel import ShardedMarginHead
from tests.helpers import IMAGE_SIZE, quiet_trainer, run_rank_script, separable_images, tiny_backbone

# The modules have a validation_step; these fits have no validation data.
pytestmark = pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")

EMBEDDING_SIZE = 16
BATCH = 8
NUM_BATCHES = 8
FAULT_STEP = 5  # the batch (and, without accumulation, the optimizer step) whose values are spoiled
ROW = 2  # the spoiled row of that batch
SPOILED = 3  # values spoiled in that row


class FaultyBackbone(nn.Module):
    """``tiny_backbone`` whose output (the embeddings: the neck is the identity) is spoiled in chosen training calls.

    ``faults`` maps the index of a training forward call to ``"inf"`` or ``"nan"`` (the first ``SPOILED`` values of
    row ``ROW`` become that), ``"grad"`` (finite output, but its gradient is made inf in backward) or ``"huge"`` (its
    gradient is multiplied by 1e25: finite, but the squares of the parameters' gradients overflow float32).
    """

    def __init__(self, faults=None):
        super().__init__()
        self.net = tiny_backbone(EMBEDDING_SIZE)
        self.faults = dict(faults or {})
        self.calls = 0

    def forward(self, images):
        out = self.net(images)
        if not self.training:
            return out
        kind = self.faults.get(self.calls)
        self.calls += 1
        if kind in ("inf", "nan"):
            out = out.clone()
            out[ROW, :SPOILED] = float(kind)
        elif kind == "grad":
            out.register_hook(lambda grad: torch.full_like(grad, math.inf))
        elif kind == "huge":
            out.register_hook(lambda grad: grad * 1e25)
        return out


def make_module(faults=None, neck="identity", **kwargs):
    torch.manual_seed(0)
    return MarginModule(
        backbone=FaultyBackbone(faults),
        num_classes=4,
        embedding_size=EMBEDDING_SIZE,
        head="arcface",
        head_kwargs={"scale": 16.0, "margin": 0.2},
        neck=neck,
        input_size=IMAGE_SIZE,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4),
        **kwargs,
    )


def dataset():
    images, labels = separable_images(num_classes=4, per_class=16)
    order = torch.randperm(labels.shape[0], generator=torch.Generator().manual_seed(1))  # mixed classes per batch
    return TensorDataset(images[order], labels[order])


def loader(without_batches=()):
    """The batches in a fixed order; ``without_batches``: a loader of the same batches with those left out."""
    data = dataset()
    kept = [i for i in range(len(data)) if i // BATCH not in set(without_batches)]
    return DataLoader(Subset(data, kept), batch_size=BATCH, shuffle=False)


def batch(index):
    images, labels = dataset().tensors
    return images[index * BATCH : (index + 1) * BATCH], labels[index * BATCH : (index + 1) * BATCH]


def fit(module, callbacks=(), max_steps=NUM_BATCHES, data=None, ckpt_path=None, **kwargs):
    trainer = quiet_trainer(max_steps=max_steps, callbacks=list(callbacks), **kwargs)
    trainer.fit(module, data if data is not None else loader(), ckpt_path=ckpt_path)
    return trainer


def assert_same_state(module, reference):
    state, expected = module.state_dict(), reference.state_dict()
    assert state.keys() == expected.keys()
    for key in expected:
        assert torch.equal(state[key], expected[key]), key


NUMBER = r"([-+]?(?:\d+\.?\d*(?:e[-+]?\d+)?|nan|inf))"


def number(pattern, message):
    match = re.search(pattern.replace("NUMBER", NUMBER), message)
    assert match, f"{pattern!r} not in {message!r}"
    return float(match.group(1)), float(match.group(2))


# ---- stop ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["inf", "nan"])
def test_stop_raises_in_the_step_of_a_non_finite_embedding_with_its_statistics(kind):
    module = make_module({FAULT_STEP: kind})
    with pytest.raises(NonFiniteError) as caught:
        fit(module, [NonFiniteGuard()])
    report, message = caught.value.report, str(caught.value)
    assert isinstance(caught.value, RuntimeError)
    assert report.global_step == FAULT_STEP and report.batch_indices == (FAULT_STEP,) and report.epoch == 0
    assert report.kinds == ("embeddings",)
    assert f"global step {FAULT_STEP} (epoch 0, batch {FAULT_STEP})" in message
    assert "arcface ArcFace(embedding_size=16, num_classes=4, scale=16.0, margin=0.2, easy_margin=False)" in message
    nan_values, inf_values = (SPOILED, 0) if kind == "nan" else (0, SPOILED)
    assert f"1 of {BATCH} rows non-finite ({nan_values} NaN and {inf_values} inf values)" in message

    # Nothing was trained on it: the weights are those of a run that stopped before that step.
    reference = make_module()
    fit(reference, max_steps=FAULT_STEP)
    assert_same_state(module, reference)

    # The statistics of the step's embeddings, computed here from the weights the step saw.
    images, labels = batch(FAULT_STEP)
    with torch.no_grad():
        embeddings = reference.backbone.net(images).double()
    finite = [row for row in range(BATCH) if row != ROW]
    norms = [math.sqrt(sum(value**2 for value in embeddings[row].tolist())) for row in finite]
    centres = reference.head.weight.detach().double()
    cosine = torch.nn.functional.cosine_similarity(embeddings[finite, None, :], centres[None], dim=2)
    true = cosine[torch.arange(len(finite)), labels[finite]]
    assert number("L2 norm of the finite rows min NUMBER max NUMBER;", message) == pytest.approx(
        (min(norms), max(norms)), rel=1e-5
    )
    assert number("cosine to the class centres min NUMBER max NUMBER,", message) == pytest.approx(
        (float(cosine.min()), float(cosine.max())), rel=1e-5, abs=1e-6
    )
    assert number("to the true class min NUMBER max NUMBER", message) == pytest.approx(
        (float(true.min()), float(true.max())), rel=1e-5, abs=1e-6
    )
    assert report.loss is None  # the guard made it NaN: nothing to report
    unpickled = pickle.loads(pickle.dumps(caught.value))  # as multiprocessing launchers send errors back
    assert str(unpickled) == message and unpickled.report == report


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_stop_on_finite_loss_with_non_finite_gradients_names_the_parameters(precision):
    module = make_module({FAULT_STEP: "grad"})
    with pytest.raises(NonFiniteError, match=f"non-finite gradients at global step {FAULT_STEP} ") as caught:
        fit(module, [NonFiniteGuard()], precision=precision)
    report = caught.value.report
    assert report.kinds == ("gradients",)
    assert math.isfinite(report.loss)
    # Only the backbone is behind the spoiled gradient; the head's gradient comes straight from the loss.
    assert report.nonfinite_parameters == ("backbone.net.1.weight", "backbone.net.1.bias")
    assert "in 2 of 3 parameters (backbone.net.1.weight, backbone.net.1.bias)" in str(caught.value)
    reference = make_module()
    fit(reference, max_steps=FAULT_STEP, precision=precision)
    assert_same_state(module, reference)


def test_stop_restores_the_buffers_the_faulty_forward_pass_spoiled():
    module = make_module({FAULT_STEP: "inf"}, neck="fc_bn")  # BatchNorm after the spoiled backbone output
    with pytest.raises(NonFiniteError, match="8 of 8 rows non-finite"):  # the inf spreads through the batch norm
        fit(module, [NonFiniteGuard()])
    reference = make_module(neck="fc_bn")
    fit(reference, max_steps=FAULT_STEP)
    assert_same_state(module, reference)  # running mean/var and num_batches_tracked included


def test_a_sharded_head_is_named_with_the_head_it_holds():
    module = make_module({1: "nan"}, chunk_size=3)
    with pytest.raises(NonFiniteError) as caught:
        fit(module, [NonFiniteGuard()])
    message = str(caught.value)
    assert "arcface ArcFace(embedding_size=16, num_classes=4, scale=16.0, margin=0.2, easy_margin=False) in " in message
    assert "ShardedMarginHead(num_classes=4, " in message
    assert "chunk_size=3" in message and "to the true class min" in message


# ---- skip ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["inf", "nan", "grad"])
def test_skip_drops_exactly_that_steps_update(tmp_path, kind):
    module = make_module({FAULT_STEP: kind})
    guard = NonFiniteGuard(action="skip")
    with pytest.warns(RuntimeWarning, match=rf"global step {FAULT_STEP} .*step skipped \(1 so far\)"):
        # Gradient clipping (configs/trainer.yaml has it) runs after the guard, on no gradients.
        trainer = fit(module, [guard], gradient_clip_val=0.5, logger=CSVLogger(tmp_path), log_every_n_steps=1)
    assert trainer.global_step == NUM_BATCHES and guard.skipped_steps == 1
    with open(next(tmp_path.rglob("metrics.csv"))) as handle:
        logged = {row["step"]: row for row in csv.DictReader(handle)}
    skipped = [float(logged[str(step)]["train/skipped_steps"]) for step in range(NUM_BATCHES)]
    assert skipped == [0] * FAULT_STEP + [1] * (NUM_BATCHES - FAULT_STEP)
    # The logged loss of the skipped step is NaN when its embeddings were not finite (a finite stand-in ran).
    assert math.isnan(float(logged[str(FAULT_STEP)]["train/loss"])) == (kind != "grad")
    assert all(torch.isfinite(p).all() for p in module.parameters())

    # A run that never saw that batch: every other update, momentum and weight decay included, is the same.
    reference = make_module()
    fit(reference, max_steps=NUM_BATCHES - 1, data=loader(without_batches=[FAULT_STEP]), gradient_clip_val=0.5)
    assert_same_state(module, reference)


def test_skip_puts_back_the_running_statistics_and_without_restore_they_stay_nan():
    module = make_module({FAULT_STEP: "inf"}, neck="fc_bn")
    with pytest.warns(RuntimeWarning, match="step skipped"):
        fit(module, [NonFiniteGuard(action="skip")])
    reference = make_module(neck="fc_bn")
    fit(reference, max_steps=NUM_BATCHES - 1, data=loader(without_batches=[FAULT_STEP]))
    assert_same_state(module, reference)

    unrestored = make_module({FAULT_STEP: "inf"}, neck="fc_bn")
    with pytest.warns(RuntimeWarning, match="step skipped"):
        fit(unrestored, [NonFiniteGuard(action="skip", restore_buffers=False)])
    batch_norm = unrestored.neck[2]
    assert isinstance(batch_norm, nn.BatchNorm1d) and not torch.isfinite(batch_norm.running_mean).all()
    assert all(torch.isfinite(p).all() for p in unrestored.parameters())  # the parameters were still protected


def test_skip_with_gradient_accumulation_drops_the_whole_accumulated_step():
    module = make_module({FAULT_STEP: "inf"})  # batch 5 belongs to optimizer step 2 (batches 4 and 5)
    guard = NonFiniteGuard(action="skip")
    with pytest.warns(RuntimeWarning, match=r"global step 2 \(epoch 0, batches 4, 5\)"):
        fit(module, [guard], max_steps=NUM_BATCHES // 2, accumulate_grad_batches=2)
    reference = make_module()
    fit(reference, max_steps=NUM_BATCHES // 2 - 1, data=loader(without_batches=[4, 5]), accumulate_grad_batches=2)
    assert_same_state(module, reference)


def test_max_skips_stops_at_the_next_fault():
    module = make_module({2: "inf", 4: "nan"})
    guard = NonFiniteGuard(action="skip", max_skips=1)
    with pytest.warns(RuntimeWarning, match="global step 2 "), pytest.raises(NonFiniteError) as caught:
        fit(module, [guard])
    assert caught.value.report.global_step == 4 and guard.skipped_steps == 1
    assert "1 steps already skipped (max_skips=1)" in str(caught.value)


def test_the_skip_count_survives_resume(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=3)
    with pytest.warns(RuntimeWarning, match="step skipped"):
        fit(make_module({1: "nan"}), [NonFiniteGuard("skip"), checkpoint], max_steps=3, enable_checkpointing=True)
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert saved["callbacks"]["NonFiniteGuard"] == {"skipped_steps": 1}

    resumed = NonFiniteGuard(action="skip")
    trainer = fit(make_module(), [resumed], max_steps=5, ckpt_path=tmp_path / "last.ckpt")
    assert trainer.global_step == 5 and resumed.skipped_steps == 1
    assert trainer.callback_metrics["train/skipped_steps"] == 1.0


# ---- what it leaves alone -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["stop", "skip"])
def test_a_normal_run_is_bitwise_unchanged(action):
    plain = make_module(neck="fc_bn")
    fit(plain)
    guarded = make_module(neck="fc_bn")
    fit(guarded, [NonFiniteGuard(action=action)])
    assert_same_state(guarded, plain)
    assert not torch.equal(guarded.head.weight, make_module(neck="fc_bn").head.weight)  # it did train


def test_huge_but_finite_gradients_are_no_fault():
    module = make_module({NUM_BATCHES - 1: "huge"})  # the last step, so no later forward pass overflows
    guard = NonFiniteGuard(action="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the guard warns on every skip
        fit(module, [guard])
    assert guard.skipped_steps == 0
    weight = module.backbone.net[1].weight
    assert torch.isfinite(weight).all() and weight.abs().max() > 1e18  # the huge update happened


def fp16_plugin():
    # Lightning turns precision="16-mixed" into bf16 on CPU; the plugin itself runs fp16 autocast with a GradScaler.
    return MixedPrecision("16-mixed", "cpu")


def test_fp16_inf_gradients_are_left_to_the_grad_scaler():
    module = make_module({FAULT_STEP: "grad"})
    plugin = fp16_plugin()
    guard = NonFiniteGuard()
    trainer = fit(module, [guard], plugins=[plugin])  # no NonFiniteError
    assert trainer.global_step == NUM_BATCHES and guard.skipped_steps == 0
    clean = fp16_plugin()
    fit(make_module(), plugins=[clean])
    assert clean.scaler.get_scale() < 2.0**16  # the scaler's own overflow steps happen in the clean run too
    assert plugin.scaler.get_scale() == clean.scaler.get_scale() / 2  # and the injected inf halved it once more
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_fp16_non_finite_embeddings_still_stop():
    module = make_module({FAULT_STEP: "inf"})
    with pytest.raises(NonFiniteError, match=f"embeddings at global step {FAULT_STEP} .*gradients not checked"):
        fit(module, [NonFiniteGuard()], plugins=[fp16_plugin()])


# ---- skipping by dropping gradients: what torch's optimizers do with a parameter without one ---------------------


@pytest.mark.parametrize(
    "factory",
    [
        lambda params, foreach: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.1, foreach=foreach),
        lambda params, foreach: torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, foreach=foreach),
        lambda params, foreach: torch.optim.AdamW(params, lr=0.1, weight_decay=0.1, foreach=foreach),
        lambda params, foreach: torch.optim.AdamW(params, lr=0.1, amsgrad=True, foreach=foreach),
    ],
    ids=["sgd_weight_decay", "sgd_nesterov", "adamw", "adamw_amsgrad"],
)
@pytest.mark.parametrize("foreach", [False, True])
def test_sgd_and_adamw_leave_a_parameter_without_gradient_and_its_state_untouched(factory, foreach):
    first, second = nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(2))
    optimizer = factory([first, second], foreach)
    for _ in range(2):  # momentum / moments and step counts exist
        optimizer.zero_grad()
        ((first**2).sum() + (second**3).sum()).backward()
        optimizer.step()
    before = [first.detach().clone(), second.detach().clone()]
    state = copy.deepcopy(optimizer.state_dict()["state"])

    optimizer.zero_grad()
    ((first**2).sum() + (second**3).sum()).backward()
    first.grad = None  # what the guard does to every parameter; here to one, to see the other one still moves
    optimizer.step()

    assert torch.equal(first, before[0])
    assert not torch.equal(second, before[1])
    for key, value in state[0].items():
        assert torch.equal(torch.as_tensor(optimizer.state_dict()["state"][0][key]), torch.as_tensor(value)), key


# ---- the functional core ------------------------------------------------------------------------------------------


def test_embedding_statistics_against_numpy_with_sub_centres_and_a_shard():
    generator = np.random.default_rng(0)
    embeddings = generator.normal(size=(6, 4))
    embeddings[1, 2] = np.nan
    embeddings[4, :] = -np.inf
    centres = generator.normal(size=(3 * 2, 4))  # classes 10, 11, 12 of a shard, two sub-centres each (class-major)
    labels = np.array([10, 11, 12, 13, 10, 12])  # class 13 is on another shard

    stats = embedding_statistics(
        torch.tensor(embeddings), torch.tensor(centres), torch.tensor(labels), rows_per_class=2, class_offset=10
    )

    finite = [0, 2, 3, 5]
    norms = np.sqrt((embeddings[finite] ** 2).sum(axis=1))
    unit = embeddings[finite] / norms[:, None]
    cosine = unit @ (centres / np.linalg.norm(centres, axis=1, keepdims=True)).T
    true = [
        max(cosine[i, 2 * (labels[row] - 10)], cosine[i, 2 * (labels[row] - 10) + 1])
        for i, row in enumerate(finite)
        if labels[row] != 13
    ]
    assert (stats.rows, stats.nonfinite_rows, stats.nan_values, stats.inf_values) == (6, 2, 1, 4)
    assert (stats.norm_min, stats.norm_max) == pytest.approx((norms.min(), norms.max()))
    assert (stats.cosine_min, stats.cosine_max) == pytest.approx((cosine.min(), cosine.max()))
    assert (stats.true_cosine_min, stats.true_cosine_max) == pytest.approx((min(true), max(true)))


def test_embedding_statistics_without_a_finite_row_or_centres():
    stats = embedding_statistics(torch.full((2, 3), math.nan))
    assert (stats.nonfinite_rows, stats.nan_values, stats.norm_min, stats.cosine_min) == (2, 6, None, None)
    assert str(stats) == "2 of 2 rows non-finite (6 NaN and 0 inf values)"


def test_nonfinite_parameters_names_those_with_a_nan_or_inf_gradient():
    parameters = [(name, nn.Parameter(torch.zeros(2))) for name in ("a", "b", "c", "d")]
    parameters[0][1].grad = torch.tensor([0.0, math.nan])
    parameters[1][1].grad = torch.zeros(2)
    sparse = torch.sparse_coo_tensor(torch.tensor([[1]]), torch.tensor([math.inf]), (2,), check_invariants=True)
    parameters[3][1].grad = sparse
    assert nonfinite_parameters(parameters) == ["a", "d"]


def test_describe_head_names_the_registry_name_and_hyperparameters():
    head = create_head("cosface", embedding_size=8, num_classes=3, margin=0.35)
    assert describe_head(head) == "cosface CosFace(embedding_size=8, num_classes=3, scale=64.0, margin=0.35)"
    wrapped = describe_head(ShardedMarginHead(head, sample_rate=0.5))
    assert wrapped.startswith("cosface CosFace(embedding_size=8, num_classes=3, scale=64.0, margin=0.35) in ")
    assert "ShardedMarginHead(num_classes=3" in wrapped and "sample_rate=0.5" in wrapped


def test_invalid_arguments_name_the_allowed_values():
    with pytest.raises(ValueError, match="`action` must be one of 'stop', 'skip'; got 'ignore'"):
        NonFiniteGuard(action="ignore")
    with pytest.raises(ValueError, match="`max_skips` only applies to action='skip'"):
        NonFiniteGuard(max_skips=3)
    with pytest.raises(ValueError, match="`max_skips` must be an integer >= 0"):
        NonFiniteGuard(action="skip", max_skips=-1)
    with pytest.raises(ValueError, match="NonFiniteGuard: .* has no `backbone.head`"):
        fit(make_module(), [NonFiniteGuard(head_path="backbone.head")], max_steps=1)


# ---- DDP: every rank takes the same decision ----------------------------------------------------------------------

DDP_SCRIPT = """
import os, sys, warnings
from pathlib import Path

import torch

from lightning_margin.callbacks.nonfinite_diagnostics import NonFiniteError
from lightning_margin.callbacks.nonfinite_guard import NonFiniteGuard
from tests.helpers import quiet_trainer
from tests.test_nonfinite_guard import loader, make_module

out, action = Path(sys.argv[1]), sys.argv[2]
rank = int(os.environ.get("LOCAL_RANK", 0))  # Lightning sets it in the process it launches for rank 1
module = make_module({2: "nan"} if rank == 1 else {})  # only rank 1 sees the fault, in its third step
guard = NonFiniteGuard(action)
trainer = quiet_trainer(devices=2, strategy="ddp", max_steps=4, callbacks=[guard])
result = {}
try:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        trainer.fit(module, loader())
    result["warnings"] = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
except NonFiniteError as error:
    result.update(error=str(error), step=error.report.global_step)
result.update(state=module.state_dict(), skipped=guard.skipped_steps)
torch.save(result, out / f"rank{rank}.pt")
"""


@pytest.mark.slow
@pytest.mark.parametrize("action", ["skip", "stop"])
def test_ddp_a_fault_on_one_rank_stops_or_skips_on_every_rank(tmp_path, action):
    script = tmp_path / "ddp_guard.py"
    script.write_text(DDP_SCRIPT)
    ranks = run_rank_script(script, tmp_path, action, timeout=300, weights_only=False)
    if action == "stop":
        assert [r["step"] for r in ranks] == [2, 2]  # rank 0 stopped too: no rank is left waiting in a collective
        assert "rank 1: non-finite embeddings at global step 2" in ranks[1]["error"]
    else:
        assert [r["skipped"] for r in ranks] == [1, 1]
        assert any("rank 1: non-finite embeddings at global step 2" in w for w in ranks[1]["warnings"])
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key  # the replicas are still identical
        assert torch.isfinite(value).all(), key
