from functools import partial

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger

from lightning_margin import MarginModule
from lightning_margin.callbacks import ROCFigure
from lightning_margin.heads import ArcFace, CosFace, Softmax, create_head, get_head_class, list_heads
from tests.helpers import IMAGE_SIZE, quiet_trainer, tiny_backbone, train_loader


def make_module(head="arcface", **kwargs):
    kwargs.setdefault("head_kwargs", {"scale": 16.0, "margin": 0.2} if head in ("arcface", "cosface") else None)
    return MarginModule(
        backbone=tiny_backbone(),
        num_classes=4,
        embedding_size=16,
        head=head,
        neck="linear",
        input_size=IMAGE_SIZE,
        **kwargs,
    )


def trainer(tmp_path, **kwargs):
    kwargs.setdefault("max_steps", 5)
    return quiet_trainer(default_root_dir=tmp_path, logger=CSVLogger(tmp_path), log_every_n_steps=1, **kwargs)


@pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")
def test_forward_is_neck_of_backbone_and_training_loss_is_the_heads():
    module = make_module()
    images = torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE)
    labels = torch.tensor([0, 1, 2, 3])
    features = F.relu(F.linear(images.flatten(1), module.backbone[1].weight, module.backbone[1].bias))
    expected = F.linear(features, module.neck[1].weight, module.neck[1].bias)
    torch.testing.assert_close(module(images), expected)
    out = module.training_step((images, labels), 0)
    # ArcFace loss written out: s * cos(theta_y + m) on the true class, s * cos elsewhere.
    cos = F.normalize(expected) @ F.normalize(module.head.weight).T
    theta = torch.acos(cos[torch.arange(4), labels])
    logits = 16.0 * cos
    logits[torch.arange(4), labels] = 16.0 * torch.cos(theta + 0.2)
    torch.testing.assert_close(out["loss"], F.cross_entropy(logits, labels))
    assert out["embeddings"].requires_grad is False and torch.equal(out["labels"], labels)


def test_bad_configuration_fails_before_training_and_names_the_allowed_values():
    with pytest.raises(ValueError, match="did you mean.*iresnet50"):
        MarginModule(backbone="iresnet500", num_classes=4)
    with pytest.raises(ValueError, match="available heads: .*arcface"):
        make_module(head="arcfaec")
    with pytest.raises(ValueError, match="embedding_size=32, but the module has embedding_size=16"):
        make_module(head=ArcFace(embedding_size=32, num_classes=4))
    with pytest.raises(ValueError, match="num_classes"):
        make_module(head=ArcFace(embedding_size=16, num_classes=5))
    with pytest.raises(ValueError, match="does not take 'margn'"):
        make_module(head="arcface", head_kwargs={"margn": 0.5})
    with pytest.raises(ValueError, match="outputs 32"):
        MarginModule(backbone=tiny_backbone(), num_classes=4, embedding_size=16, neck="identity", input_size=8)


def test_head_gets_its_own_weight_decay_and_every_parameter_is_optimised_once():
    module = make_module(head_weight_decay=0.0)
    optimizer = module.configure_optimizers()
    body, head = optimizer.param_groups
    assert body["weight_decay"] == 5e-4 and head["weight_decay"] == 0.0
    assert [id(p) for p in head["params"]] == [id(module.head.weight)]
    assert sorted(id(p) for g in optimizer.param_groups for p in g["params"]) == sorted(
        id(p) for p in module.parameters()
    )


@pytest.mark.parametrize("head", ["softmax", "arcface", "cosface", "combined"])
def test_fit_lowers_the_loss_and_logs_accuracy_and_lr(tmp_path, head):
    module = make_module(head=head, optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9))
    images, labels = next(iter(train_loader(batch_size=64, shuffle=False)))
    with torch.no_grad():
        before = module.head(module(images), labels).item()
    trainer(tmp_path, max_steps=40).fit(module, train_loader())
    with torch.no_grad():
        module.eval()
        after = module.head(module(images), labels).item()
        accuracy = (module.head.logits(module(images)).argmax(1) == labels).float().mean().item()
    assert after < 0.5 * before
    assert accuracy == 1.0
    metrics = trainer_metrics(tmp_path)
    assert {"train/loss", "train/accuracy", "train/lr"} <= set(metrics)
    assert metrics["train/lr"] == pytest.approx(0.05)


def trainer_metrics(tmp_path):
    import csv

    with open(next(tmp_path.rglob("metrics.csv"))) as handle:
        rows = list(csv.DictReader(handle))
    last = {}
    for row in rows:
        last.update({key: float(value) for key, value in row.items() if value not in ("", None)})
    return last


def test_bf16_mixed_fit_is_finite_and_the_head_runs_in_fp32(tmp_path):
    module = make_module(optimizer=lambda p: torch.optim.SGD(p, lr=0.05))
    seen = {}
    original = module.head._logits

    def spy(x, labels):
        seen.setdefault("input", x.dtype)
        logits = original(x, labels)
        seen.setdefault("logits", logits.dtype)
        return logits

    module.head._logits = spy

    def record_embedding_dtype(mod, inputs, output):
        seen.setdefault("embedding", output.dtype)  # returns None: a forward hook must not replace the output

    module.neck.register_forward_hook(record_embedding_dtype)
    trainer(tmp_path, precision="bf16-mixed", max_steps=10).fit(module, train_loader())
    assert seen == {"embedding": torch.bfloat16, "input": torch.float32, "logits": torch.float32}
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert torch.isfinite(torch.tensor(trainer_metrics(tmp_path)["train/loss"]))


@pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")
def test_every_registered_head_trains_inside_the_module(tmp_path):
    for head in list_heads():
        module = make_module(head=head, optimizer=lambda p: torch.optim.SGD(p, lr=0.01))
        images, labels = next(iter(train_loader(batch_size=16)))
        loss = module.training_step((images, labels), 0)["loss"]
        loss.backward()
        assert torch.isfinite(loss), head
        assert module.head.weight.grad is not None and torch.isfinite(module.head.weight.grad).all(), head


def test_validation_logs_every_verification_metric_per_set_and_a_roc_image(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from sklearn.metrics import roc_auc_score
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lightning_margin.data import FaceDataModule

    data = FaceDataModule(
        train="synthetic:4", val_sets={"synth": "synthetic:40"}, image_size=IMAGE_SIZE, batch_size=16, num_workers=0
    )
    module = make_module(optimizer=lambda p: torch.optim.SGD(p, lr=0.05))
    quiet_trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        logger=TensorBoardLogger(tmp_path),
        num_sanity_val_steps=0,
        callbacks=[ROCFigure()],  # the module draws no figures itself
    ).fit(module, data)
    logged = module.trainer.callback_metrics
    keys = {"accuracy", "accuracy_std", "threshold", "tar@far=1e-3", "eer", "auc"}
    assert {f"val/synth/{key}" for key in keys} <= set(logged)

    # The AUC, recomputed by sklearn from flip-TTA cosine scores written out here.
    module.eval()
    scores, same = [], []
    with torch.no_grad():
        for images1, images2, issame in data.val_dataloader()[0]:
            e1 = F.normalize(module(images1) + module(images1.flip(-1)))
            e2 = F.normalize(module(images2) + module(images2.flip(-1)))
            scores.append((e1 * e2).sum(1))
            same.append(issame)
    auc = roc_auc_score(torch.cat(same).numpy(), torch.cat(scores).numpy())
    assert logged["val/synth/auc"].item() == pytest.approx(auc, abs=1e-5)

    events = EventAccumulator(str(next(tmp_path.rglob("events.out.tfevents*")).parent)).Reload()
    assert "val/synth/roc" in events.Tags()["images"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sample_rate": 0.5}, r"sample_rate=0.5 \(Partial FC\) with 2 processes needs sharded=True"),
        ({"chunk_size": 4}, r"chunk_size=4 with 2 processes needs sharded=True"),
    ],
)
def test_a_wrapped_head_under_ddp_without_sharding_is_refused_before_training(options, message):
    from types import SimpleNamespace

    model = MarginModule(tiny_backbone(), num_classes=8, embedding_size=16, input_size=IMAGE_SIZE, **options)
    model._trainer = SimpleNamespace(world_size=2)  # what configure_model sees in a 2-process DDP fit
    with pytest.raises(ValueError, match=message):
        model.configure_model()
    model._trainer = SimpleNamespace(world_size=1)  # one process: Partial FC and chunking need no sharding
    model.configure_model()


# ---- the head argument and its record ------------------------------------------------------------------------

COSFACE_RECORD = {"class_path": "lightning_margin.heads.CosFace", "init_args": {"scale": 16.0, "margin": 0.2}}


@pytest.mark.parametrize(
    ("head", "head_kwargs"),
    [
        ("cosface", {"scale": 16.0, "margin": 0.2}),  # Python: a registry name and its hyperparameters
        (partial(CosFace, scale=16.0, margin=0.2), None),  # the injected callable (what the CLI builds)
        (lambda d, c: CosFace(embedding_size=d, num_classes=c, scale=16.0, margin=0.2), None),
        (CosFace(16, 4, scale=16.0, margin=0.2), None),  # an instance
        (COSFACE_RECORD, None),  # a record, as checkpoints hold it
        ({"class_path": "CosFace", "init_args": {"scale": 16.0, "margin": 0.2}}, None),  # the short class path
    ],
    ids=["name", "partial", "lambda", "instance", "record", "short"],
)
def test_every_head_form_builds_the_head_and_records_its_class_and_constructor_arguments(tmp_path, head, head_kwargs):
    module = make_module(head=head, head_kwargs=head_kwargs)
    assert type(module.head) is CosFace and (module.head.scale, module.head.margin) == (16.0, 0.2)
    assert module.hparams["head"] == COSFACE_RECORD and "head_kwargs" not in module.hparams
    # Plain data: a checkpoint's hyperparameters load with weights_only=True, and rebuild the head.
    torch.save(dict(module.hparams), tmp_path / "hparams.pt")
    loaded = torch.load(tmp_path / "hparams.pt", weights_only=True)
    rebuilt = make_module(head=loaded["head"], head_kwargs=None)
    assert type(rebuilt.head) is CosFace and rebuilt.head.margin == 0.2


def test_the_record_keeps_constructor_values_when_a_schedule_moves_an_attribute():
    module = make_module(head="arcface", head_kwargs={"scale": 16.0, "margin": 0.2})
    module.head.margin = 0.0  # what HeadScheduler does at fit start
    assert module.head.hparams == {"scale": 16.0, "margin": 0.2, "easy_margin": False, "gradient": "exact"}
    assert module.hparams["head"]["init_args"]["margin"] == 0.2


@pytest.mark.parametrize("name", list_heads())
def test_a_heads_hparams_are_its_constructor_arguments_and_rebuild_it(name):
    import inspect

    head = create_head(name, embedding_size=8, num_classes=3)
    cls = get_head_class(name)
    parameters = inspect.signature(cls).parameters
    expected = {key: p.default for key, p in parameters.items() if key not in ("embedding_size", "num_classes")}
    assert head.hparams == expected  # created with no hyperparameters: every default
    assert type(head)(8, 3, **head.hparams).hparams == expected


def test_head_hparams_survive_copies_and_name_the_argument_not_the_attribute():
    import copy
    import pickle

    head = Softmax(8, 3, bias=False)  # the attribute `bias` is a parameter (None here), the argument a flag
    assert head.hparams == {"bias": False}
    assert copy.deepcopy(head).hparams == pickle.loads(pickle.dumps(head)).hparams == {"bias": False}


def test_checkpoints_from_before_the_record_still_load(tmp_path):
    from lightning_margin import FaceEmbedder

    module = MarginModule("test_resnet", num_classes=4, embedding_size=8, neck="fc_bn", input_size=32, head="cosface")
    old = {
        "backbone": "test_resnet",
        "num_classes": 4,
        "embedding_size": 8,
        "neck": "fc_bn",
        "input_size": 32,
        "head": "cosface",
        "head_kwargs": {"scale": 16.0, "margin": 0.2},
    }
    for name, hparams in (
        ("python", old),
        ("cli", {**old, "_instantiator": "lightning.pytorch.cli.instantiate_module"}),
    ):
        path = tmp_path / f"{name}.ckpt"
        torch.save(
            {"state_dict": module.state_dict(), "hyper_parameters": hparams, "pytorch-lightning_version": "2.6.0"}, path
        )
        loaded = MarginModule.load_from_checkpoint(path)
        assert type(loaded.head) is CosFace and (loaded.head.scale, loaded.head.margin) == (16.0, 0.2), name
        assert loaded.hparams["head"] == COSFACE_RECORD, name
        with pytest.warns(UserWarning, match="no datamodule_hyper_parameters"):
            embedder = FaceEmbedder.from_checkpoint(path)
        assert (embedder.config["loss"], embedder.config["loss_kwargs"]) == ("cosface", {"scale": 16.0, "margin": 0.2})


def test_bad_head_arguments_are_named():
    with pytest.raises(ValueError, match="`head_kwargs` only applies to a head name"):
        make_module(head=partial(CosFace, margin=0.2), head_kwargs={"scale": 16.0})
    with pytest.raises(ValueError, match="must return a MarginHead, got Linear"):
        make_module(head=lambda d, c: torch.nn.Linear(d, c), head_kwargs=None)
    with pytest.raises(ValueError, match="no registered head class at 'my.Head'; available heads: .*cosface"):
        make_module(head={"class_path": "my.Head"}, head_kwargs=None)
    with pytest.raises(ValueError, match="needs a `class_path`"):
        make_module(head={"init_args": {}}, head_kwargs=None)
    with pytest.raises(ValueError, match="num_classes=5, but the module has num_classes=4"):
        make_module(head=lambda d, c: ArcFace(d, 5), head_kwargs=None)
