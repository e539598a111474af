"""``export --onnx --layout insightface``: the ONNX file insightface's runtime runs, giving our raw embedding.

insightface's runtime is rebuilt here from what it documents and does (``insightface/model_zoo``): the model router
takes an ONNX file as a recognition model when its input is square, at least 112 and a multiple of 16 (and it has
fewer than 5 outputs); ``ArcFaceONNX`` reads the input name and size from the session, assumes the graph normalises
its input itself only if a ``Sub`` and a ``Mul`` node are among its first 8 nodes (else mean = std = 127.5), and
``get_feat`` feeds ``cv2.dnn.blobFromImages(bgr_images, 1 / std, size, (mean,) * 3, swapRB=True)`` and returns the
first output as it is (insightface reports its norm).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_margin.embedder import FaceEmbedder
from lightning_margin.export import ONNX_NAME, export_onnx, main

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
cv2 = pytest.importorskip("cv2")


class InsightFaceRecognition:
    """What insightface's model_zoo does with a recognition ONNX file (router checks, ArcFaceONNX, get_feat)."""

    def __init__(self, path) -> None:
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = inputs[0].shape
        assert len(outputs) < 5 and shape[2] == shape[3] and shape[2] >= 112 and shape[2] % 16 == 0, shape
        nodes = [node.name for node in onnx.load(str(path)).graph.node[:8]]
        find_sub = any(name.startswith(("Sub", "_minus")) for name in nodes)
        find_mul = any(name.startswith(("Mul", "_mul")) for name in nodes)
        self.input_mean, self.input_std = (0.0, 1.0) if find_sub and find_mul else (127.5, 127.5)
        self.input_size = tuple(shape[2:4][::-1])
        self.input_name = inputs[0].name
        self.output_names = [output.name for output in outputs]

    def get_feat(self, bgr_images: list[np.ndarray]) -> np.ndarray:
        blob = cv2.dnn.blobFromImages(
            bgr_images, 1.0 / self.input_std, self.input_size, (self.input_mean,) * 3, swapRB=True
        )
        return self.session.run(self.output_names, {self.input_name: blob})[0]


def _faces(count: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (count, 3, 112, 112), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))


def _bgr_arrays(faces: torch.Tensor) -> list[np.ndarray]:
    """What insightface's callers hold: OpenCV images, HxWx3 uint8 in BGR order."""
    return [np.ascontiguousarray(face.permute(1, 2, 0).numpy()[:, :, ::-1]) for face in faces]


def _embedder(**kwargs) -> FaceEmbedder:
    torch.manual_seed(0)
    embedder = FaceEmbedder(
        "mbf", embedding_size=512, neck="identity", backbone_kwargs={"embedding_size": 512}, **kwargs
    )
    with torch.no_grad():  # BN statistics away from the identity, so a wrong normalisation shows
        for module in embedder.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return embedder.eval()


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # insightface's own normalisation
        {"channel_order": "BGR"},  # an AdaFace import: the graph swaps the channels itself
        {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},  # another normalisation: converted in-graph
    ],
    ids=["rgb", "bgr", "imagenet-normalisation"],
)
def test_insightface_runtime_gives_our_raw_embedding(tmp_path, kwargs):
    embedder = _embedder(**kwargs)
    path = export_onnx(embedder, tmp_path / ONNX_NAME, layout="insightface")
    runtime = InsightFaceRecognition(path)
    assert (runtime.input_mean, runtime.input_std) == (127.5, 127.5)  # it normalises for us, as for its own models
    assert runtime.input_name == "input.1" and runtime.input_size == (112, 112)
    faces = _faces()
    features = runtime.get_feat(_bgr_arrays(faces))
    with torch.no_grad():
        expected = embedder(embedder.preprocess(faces)).numpy()  # our raw embedding of the RGB faces
    assert features.shape == (3, 512)
    np.testing.assert_allclose(features, expected, rtol=0, atol=1e-4)
    # The raw norm, insightface's quality signal: not 1.
    norms = np.linalg.norm(features, axis=1)
    np.testing.assert_allclose(norms, np.linalg.norm(expected, axis=1), rtol=1e-5)
    assert norms.min() > 2.0


def test_the_batch_is_dynamic_and_named_as_insightface_names_it(tmp_path):
    path = export_onnx(_embedder(), tmp_path / ONNX_NAME, layout="insightface")
    graph = onnx.load(str(path)).graph
    assert [dim.dim_param or dim.dim_value for dim in graph.input[0].type.tensor_type.shape.dim] == [
        "None",
        3,
        112,
        112,
    ]
    assert graph.output[0].name == "embedding"
    runtime = InsightFaceRecognition(path)
    assert runtime.get_feat(_bgr_arrays(_faces(1))).shape == (1, 512)


def test_sizes_insightface_does_not_take_are_refused(tmp_path):
    small = FaceEmbedder("test_resnet", embedding_size=8, neck="linear", input_size=32)
    with pytest.raises(ValueError, match="input side >= 112 and a multiple of 16 .* input_size is 32"):
        export_onnx(small, tmp_path / ONNX_NAME, layout="insightface")
    with pytest.raises(ValueError, match="`layout` must be one of 'lightning-margin', 'insightface'; got 'mxnet'"):
        export_onnx(small, tmp_path / ONNX_NAME, layout="mxnet")
    assert not (tmp_path / ONNX_NAME).exists()


def test_the_command_writes_the_insightface_layout(tmp_path, capsys):
    _embedder().save_pretrained(tmp_path / "model")
    assert main([str(tmp_path / "model"), str(tmp_path / "out"), "--onnx", "--layout", "insightface"]) == 0
    assert InsightFaceRecognition(tmp_path / "out" / ONNX_NAME).input_name == "input.1"
    with pytest.raises(SystemExit):
        main([str(tmp_path / "model"), str(tmp_path / "out2"), "--layout", "insightface"])
    assert "--layout describes the ONNX file: add --onnx" in capsys.readouterr().err
