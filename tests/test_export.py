"""``lightning-margin export``: checkpoint -> FaceEmbedder folder, and ONNX whose outputs match PyTorch's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_margin.embedder import FaceEmbedder
from lightning_margin.export import export_onnx, main
from tests.test_embedder import INPUT_SIZE, make_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("export"))


def test_export_command_writes_a_folder_that_loads_to_the_same_embedder(checkpoint, tmp_path, capsys):
    config_file = tmp_path / "train.yaml"
    config_file.write_text("model:\n  head: cosface\n  head_kwargs: {scale: 16.0, margin: 0.2}\n")
    assert main([str(checkpoint), str(tmp_path / "out"), "--config", str(config_file)]) == 0
    assert "README.md, config.json, model.safetensors" in capsys.readouterr().out
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["training"]["config_file"] == config_file.read_text()
    assert "head_kwargs: {scale: 16.0, margin: 0.2}" in (tmp_path / "out" / "README.md").read_text()
    exported = FaceEmbedder.from_pretrained(tmp_path / "out")
    original = FaceEmbedder.from_checkpoint(checkpoint)
    images = torch.randint(0, 256, (3, 3, 40, 40), dtype=torch.uint8)
    assert torch.equal(exported.embed(images), original.embed(images))


def test_onnx_outputs_match_pytorch_within_1e_4(checkpoint, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    embedder = FaceEmbedder.from_checkpoint(checkpoint)
    path = export_onnx(embedder, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [node.name for node in session.get_inputs()] == ["images"]
    assert [node.name for node in session.get_outputs()] == ["embeddings"]
    for batch in (1, 5):  # the batch axis is dynamic
        images = torch.randn(batch, 3, INPUT_SIZE, INPUT_SIZE)
        (onnx_embeddings,) = session.run(None, {"images": images.numpy()})
        with torch.no_grad():
            expected = F.normalize(embedder(images), dim=1).numpy()
        assert onnx_embeddings.shape == (batch, 16)
        np.testing.assert_allclose(onnx_embeddings, expected, rtol=0, atol=1e-4)
        np.testing.assert_allclose(np.linalg.norm(onnx_embeddings, axis=1), 1.0, atol=1e-5)


def test_export_onnx_flag_and_missing_source(checkpoint, tmp_path):
    assert main([str(checkpoint), str(tmp_path / "out"), "--onnx"]) == 0
    assert (tmp_path / "out" / "model.onnx").stat().st_size > 0
    with pytest.raises(FileNotFoundError, match="no such checkpoint file or exported folder"):
        main([str(tmp_path / "missing.ckpt"), str(tmp_path / "other")])
