"""Read dlib's binary serialisation of a ``dnn`` network (e.g. ``dlib_face_recognition_resnet_model_v1.dat``).

dlib (dlib.net, Davis E. King) writes a network with ``serialize(net, out)``; this module reads such a file in Python,
without dlib, into the layers' parameters as tensors. Facts of the format, from dlib's ``serialize.h``,
``float_details.h``, ``cuda/tensor.h`` and ``dnn/{core,layers,input,loss}.h`` (dlib 19.x/20.x):

* **Integers** are a control byte (bits 0-3: how many bytes follow, bit 7: negative) then that many little-endian
  magnitude bytes; zero is one zero byte (``01 00``). **Floats** (``float``/``double`` fields) are two integers, a
  mantissa and a power-of-two exponent (``value = mantissa * 2**exponent``; exponents 32000/32001/32002 mean +inf,
  -inf, NaN). **Strings** are a length integer then the bytes; **bools** the characters ``'0'``/``'1'``.
* **Tensors** are version ``2``, the four dimensions ``num_samples, k, nr, nc``, then the values as little-endian
  IEEE float32; **alias tensors** (views into a layer's ``params``) are version ``1`` and their four dimensions.
* A **network** ``loss<...<input>>`` is the loss layer's version and details, then every wrapper's version from the
  output down (``add_layer``: 2, ``add_tag_layer``/``add_skip_layer``: 1; the one wrapping the input: 2 or 3), then the
  input layer's details, then, from the input up, each ``add_layer``'s details (a version string such as ``"con_4"``
  and the layer's fields) followed by its bookkeeping: three bools and the ``x_grad``, ``cached_output`` and
  ``params_grad`` tensors (the input-level one: ``grad_final`` and, in version 3, the sample expansion factor).
  Tags and skips carry no data, so which wrapper they were is not recorded: the layers come back as a list from the
  input up, and the caller checks it against the architecture it expects.

Every error is a :class:`DlibFormatError` naming the file and the byte offset.

Example:
    >>> net = read_dlib_net("dlib_face_recognition_resnet_model_v1.dat")  # doctest: +SKIP
    >>> [layer.kind for layer in net.layers[:5]], net.layers[0].tensors["filters"].shape  # doctest: +SKIP
    (['con', 'affine', 'relu', 'max_pool', 'con'], torch.Size([32, 3, 7, 7]))
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["DlibFormatError", "DlibLayer", "DlibNet", "known_layer_versions", "read_dlib_net"]

# float_details' special exponents.
_INF, _NINF, _NAN = 32000, 32001, 32002
# Wrapper versions: add_tag_layer / add_skip_layer write 1, add_layer (not on the input) 2, and the add_layer that
# wraps the input layer 2 or 3 (3 adds the sample expansion factor).
_TAG_OR_SKIP, _ADD_LAYER, _INPUT_ADD_LAYER = 1, 2, (2, 3)


class DlibFormatError(ValueError):
    """A file that is not (or not entirely) a dlib network this reader understands; names the file and offset."""


@dataclass(frozen=True)
class DlibLayer:
    """One layer's details as serialised: its kind, the version string, scalar fields and named tensors.

    Attributes:
        kind: The layer type without dlib's trailing version: ``"con"``, ``"affine"``, ``"bn_con"``, ``"relu"``,
            ``"max_pool"``, ``"avg_pool"``, ``"add_prev"``, ``"fc"``, ``"input_rgb_image_sized"``, ``"loss_metric"``...
        version: The version string as written (``"con_4"``, ``"affine_"``, ``"fc_2"``, ...).
        offset: Byte offset of the version string in the file.
        attributes: Scalar fields (``num_filters``, ``nr``, ``stride_y``, ``avg_red``, ``margin``, ...).
        tensors: Parameters as float32 tensors in dlib's own shapes (``filters [n, k, nr, nc]``,
            ``biases [1, n, 1, 1]``, ``gamma``/``beta [1, k, 1, 1]``, ``weights [num_inputs, num_outputs, 1, 1]``),
            copies of the file's values.
    """

    kind: str
    version: str
    offset: int
    attributes: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class DlibNet:
    """A deserialised dlib network: its loss, its input layer and its computational layers from the input up.

    Attributes:
        source: The file (or ``"<bytes>"``) it was read from, for error messages.
        loss: The loss layer's details.
        input: The input layer's details (``avg_red``/``avg_green``/``avg_blue``, ``nr``/``nc``...).
        layers: Every ``add_layer``'s details from the input to the output (tags and skips carry no data).
        num_wrappers: How many wrappers (layers, tags and skips) the file declares.
    """

    source: str
    loss: DlibLayer
    input: DlibLayer
    layers: tuple[DlibLayer, ...]
    num_wrappers: int


class _Reader:
    """A cursor over the file's bytes that decodes dlib's primitives and reports errors with file and offset."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data = memoryview(data)
        self.source = source
        self.offset = 0

    def error(self, message: str, offset: int | None = None) -> DlibFormatError:
        where = self.offset if offset is None else offset
        return DlibFormatError(f"{self.source}: offset {where}: {message}")

    def take(self, count: int, what: str) -> memoryview:
        if count > len(self.data) - self.offset:
            raise self.error(
                f"truncated file: {what} needs {count} bytes but {len(self.data) - self.offset} remain "
                f"(file size {len(self.data)})"
            )
        chunk = self.data[self.offset : self.offset + count]
        self.offset += count
        return chunk

    def peek_int(self) -> int | None:
        """The next integer's value without consuming it; ``None`` at the end of the file or if it is malformed."""
        start = self.offset
        try:
            return self.integer("integer", signed=True, max_bytes=8)
        except DlibFormatError:
            return None
        finally:
            self.offset = start

    def integer(self, what: str, signed: bool, max_bytes: int) -> int:
        start = self.offset
        control = self.take(1, what)[0]
        if control & 0x70:  # reserved bits: dlib never sets them
            raise self.error(f"{what}: byte {control:#04x} is not an integer's control byte", start)
        size = control & 0x0F if signed else control & 0x8F  # an unsigned value keeps bit 7, which makes it too big
        if not 1 <= size <= max_bytes:
            raise self.error(f"{what}: control byte {control:#04x} announces {size} bytes (1..{max_bytes})", start)
        value = int.from_bytes(self.take(size, what), "little")
        return -value if signed and control & 0x80 else value

    def signed(self, what: str, max_bytes: int = 8) -> int:
        return self.integer(what, signed=True, max_bytes=max_bytes)

    def unsigned(self, what: str, max_bytes: int = 8) -> int:
        return self.integer(what, signed=False, max_bytes=max_bytes)

    def real(self, what: str) -> float:
        start = self.offset
        if self.offset < len(self.data) and self.data[self.offset] & 0x70:
            # dlib's pre-2013 text format for floats: its control bytes never have these bits set.
            raise self.error(f"{what}: a float in dlib's old text format, which this reader does not read", start)
        mantissa = self.signed(f"{what} (mantissa)", 8)
        exponent = self.signed(f"{what} (exponent)", 2)
        if exponent == _INF:
            return math.inf
        if exponent == _NINF:
            return -math.inf
        if exponent == _NAN:
            return math.nan
        return math.ldexp(float(mantissa), exponent)

    def boolean(self, what: str) -> bool:
        start = self.offset
        byte = self.take(1, what)[0]
        if byte not in (ord("0"), ord("1")):
            raise self.error(f"{what}: expected a bool ('0' or '1'), found byte {byte:#04x}", start)
        return byte == ord("1")

    def string(self, what: str, max_length: int = 1 << 16) -> str:
        start = self.offset
        length = self.unsigned(f"{what} (length)")
        if length > max_length:
            raise self.error(f"{what}: a string of {length} bytes is not a layer name", start)
        raw = bytes(self.take(length, what))
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.error(f"{what}: {raw[:40]!r} is not an ASCII name", start) from None

    def shape(self, what: str) -> tuple[int, int, int, int]:
        start = self.offset
        dims = tuple(self.signed(f"{what} dimension {name}") for name in ("num_samples", "k", "nr", "nc"))
        if any(dim < 0 for dim in dims):
            raise self.error(f"{what}: negative dimensions {dims}", start)
        return dims  # type: ignore[return-value]

    def tensor(self, what: str) -> Tensor:
        start = self.offset
        version = self.signed(f"{what} (version)", 4)
        if version != 2:
            raise self.error(f"{what}: tensor version {version}, expected 2", start)
        dims = self.shape(what)
        count = math.prod(dims)
        raw = self.take(4 * count, f"{what} ({'x'.join(map(str, dims))} float32 values)")
        values = np.frombuffer(raw, dtype="<f4").astype(np.float32)  # a copy, in the host's byte order
        return torch.from_numpy(values.reshape(dims))

    def alias(self, what: str) -> tuple[int, int, int, int]:
        start = self.offset
        version = self.signed(f"{what} (version)", 4)
        if version != 1:
            raise self.error(f"{what}: alias tensor version {version}, expected 1", start)
        return self.shape(what)


# ---- layer details ------------------------------------------------------------------------------------------------


def _split_params(
    reader: _Reader, params: Tensor, parts: dict[str, tuple[int, ...]], what: str, start: int
) -> dict[str, Tensor]:
    """Cut a layer's flat ``params`` tensor into its alias views, in order; the sizes must add up."""
    flat = params.reshape(-1)
    total = sum(math.prod(shape) for shape in parts.values())
    if total != flat.numel():
        sizes = ", ".join(f"{name} {'x'.join(map(str, shape))}" for name, shape in parts.items())
        raise reader.error(f"{what}: params holds {flat.numel()} values but its views ({sizes}) need {total}", start)
    out, position = {}, 0
    for name, shape in parts.items():
        size = math.prod(shape)
        out[name] = flat[position : position + size].reshape(shape)  # views of the copy `tensor` made
        position += size
    return out


def _learning_rates(reader: _Reader, what: str) -> dict[str, float]:
    names = (
        "learning_rate_multiplier",
        "weight_decay_multiplier",
        "bias_learning_rate_multiplier",
        "bias_weight_decay_multiplier",
    )
    return {name: reader.real(f"{what} {name}") for name in names}


def _pool_fields(reader: _Reader, what: str) -> dict[str, Any]:
    fields = {name: reader.signed(f"{what} {name}") for name in ("nr", "nc", "stride_y", "stride_x")}
    fields |= {name: reader.signed(f"{what} {name}", 4) for name in ("padding_y", "padding_x")}
    return fields


def _con(reader: _Reader, version: str, start: int) -> tuple[dict[str, Any], dict[str, Tensor]]:
    params = reader.tensor("con params")
    attributes: dict[str, Any] = {"num_filters": reader.signed("con num_filters")}
    attributes |= {name: reader.signed(f"con {name}") for name in ("nr", "nc")}
    attributes |= {name: reader.signed(f"con {name}", 4) for name in ("stride_y", "stride_x", "padding_y", "padding_x")}
    filters, biases = reader.alias("con filters"), reader.alias("con biases")
    attributes |= _learning_rates(reader, "con")
    attributes["use_bias"] = reader.boolean("con use_bias") if version in ("con_5", "con_6") else True
    attributes["use_relu"] = reader.boolean("con use_relu") if version == "con_6" else False
    parts = {"filters": filters} | ({"biases": biases} if attributes["use_bias"] else {})
    return attributes, _split_params(reader, params, parts, version, start)


def _affine(reader: _Reader, version: str, start: int) -> tuple[dict[str, Any], dict[str, Tensor]]:
    params = reader.tensor("affine params")
    gamma, beta = reader.alias("affine gamma"), reader.alias("affine beta")
    attributes: dict[str, Any] = {"mode": "conv" if reader.signed("affine mode", 4) == 0 else "fc"}
    attributes["disabled"] = reader.boolean("affine disabled") if version == "affine_2" else False
    if attributes["disabled"]:
        return attributes, {}
    return attributes, _split_params(reader, params, {"gamma": gamma, "beta": beta}, version, start)


def _bn(reader: _Reader, version: str, start: int) -> tuple[dict[str, Any], dict[str, Tensor]]:
    params = reader.tensor("bn params")
    gamma, beta = reader.alias("bn gamma"), reader.alias("bn beta")
    tensors = _split_params(reader, params, {"gamma": gamma, "beta": beta}, version, start)
    for name in ("means", "invstds", "running_means", "running_variances"):
        tensors[name] = reader.tensor(f"bn {name}")
    attributes: dict[str, Any] = {"mode": "conv" if version == "bn_con2" else "fc"}
    attributes["num_updates"] = reader.unsigned("bn num_updates")
    attributes["running_stats_window_size"] = reader.unsigned("bn running_stats_window_size")
    attributes |= _learning_rates(reader, "bn")
    attributes["eps"] = reader.real("bn eps")
    return attributes, tensors


def _fc(reader: _Reader, version: str, start: int) -> tuple[dict[str, Any], dict[str, Tensor]]:
    attributes: dict[str, Any] = {"num_outputs": reader.unsigned("fc num_outputs")}
    attributes["num_inputs"] = reader.unsigned("fc num_inputs")
    params = reader.tensor("fc params")
    weights, biases = reader.alias("fc weights"), reader.alias("fc biases")
    bias_mode = reader.signed("fc bias_mode", 4)
    if bias_mode not in (0, 1):
        raise reader.error(f"fc bias_mode {bias_mode}: expected 0 (FC_HAS_BIAS) or 1 (FC_NO_BIAS)", start)
    attributes |= _learning_rates(reader, "fc")
    use_bias = reader.boolean("fc use_bias") if version == "fc_3" else True
    attributes["has_bias"] = bias_mode == 0 and use_bias
    parts = {"weights": weights} | ({"biases": biases} if attributes["has_bias"] else {})
    return attributes, _split_params(reader, params, parts, version, start)


def _relu(reader: _Reader, version: str, start: int) -> tuple[dict[str, Any], dict[str, Tensor]]:
    return {"disabled": reader.boolean("relu disabled") if version == "relu_2" else False}, {}


def _pool(reader: _Reader, version: str, start: int) -> tuple[dict[str, Any], dict[str, Tensor]]:
    return _pool_fields(reader, version), {}


def _no_fields(reader: _Reader, version: str, start: int) -> tuple[dict[str, Any], dict[str, Tensor]]:
    return {}, {}


def _input_rgb(reader: _Reader, version: str, start: int) -> tuple[dict[str, Any], dict[str, Tensor]]:
    means = ("avg_red", "avg_green", "avg_blue")
    attributes: dict[str, Any] = {name: reader.real(f"{version} {name}") for name in means}
    if version == "input_rgb_image_sized":
        attributes |= {name: reader.unsigned(f"{version} {name}") for name in ("nr", "nc")}
    return attributes, {}


def _loss_metric(reader: _Reader, version: str, start: int) -> tuple[dict[str, Any], dict[str, Tensor]]:
    if version == "loss_metric_":  # dlib's first version had these two values hard-coded
        return {"margin": 0.1, "dist_thresh": 0.75}, {}
    return {"margin": reader.real("loss_metric margin"), "dist_thresh": reader.real("loss_metric dist_thresh")}, {}


_Parser = Callable[[_Reader, str, int], tuple[dict[str, Any], dict[str, Tensor]]]

# version string -> (kind, parser). Computational layers, input layers and losses are told apart by where they sit.
_LAYERS: dict[str, tuple[str, _Parser]] = {
    **{version: ("con", _con) for version in ("con_4", "con_5", "con_6")},
    **{version: ("affine", _affine) for version in ("affine_", "affine_2")},
    "bn_con2": ("bn_con", _bn),
    "bn_fc2": ("bn_fc", _bn),
    **{version: ("fc", _fc) for version in ("fc_2", "fc_3")},
    **{version: ("relu", _relu) for version in ("relu_", "relu_2")},
    "max_pool_2": ("max_pool", _pool),
    "avg_pool_2": ("avg_pool", _pool),
    "add_prev_": ("add_prev", _no_fields),
}
_INPUTS: dict[str, tuple[str, _Parser]] = {
    "input_rgb_image": ("input_rgb_image", _input_rgb),
    "input_rgb_image_sized": ("input_rgb_image_sized", _input_rgb),
}
_LOSSES: dict[str, tuple[str, _Parser]] = {
    "loss_metric_": ("loss_metric", _loss_metric),
    "loss_metric_2": ("loss_metric", _loss_metric),
    "loss_multiclass_log_": ("loss_multiclass_log", _no_fields),
}


def known_layer_versions() -> dict[str, list[str]]:
    """The version strings this reader understands: ``{"layers": [...], "inputs": [...], "losses": [...]}``.

    Example:
        >>> "con_4" in known_layer_versions()["layers"]
        True
    """
    return {"layers": sorted(_LAYERS), "inputs": sorted(_INPUTS), "losses": sorted(_LOSSES)}


def _details(reader: _Reader, table: dict[str, tuple[str, _Parser]], role: str) -> DlibLayer:
    start = reader.offset
    version = reader.string(f"{role} version string")
    if version not in table:
        raise reader.error(f"unknown {role} {version!r}; this reader knows {', '.join(sorted(table))}", start)
    kind, parse = table[version]
    attributes, tensors = parse(reader, version, start)
    return DlibLayer(kind, version, start, attributes, tensors)


def _bookkeeping(reader: _Reader, input_level_version: int | None) -> None:
    """Skip what ``add_layer`` writes after its layer's details: training state, not parameters."""
    for name in ("this_layer_setup_called", "gradient_input_is_stale", "get_output_and_gradient_input_disabled"):
        reader.boolean(f"add_layer {name}")
    for name in ("x_grad", "cached_output"):
        reader.tensor(f"add_layer {name}")
    if input_level_version is None:
        reader.tensor("add_layer params_grad")
        return
    reader.tensor("add_layer grad_final")
    if input_level_version == 3:
        reader.unsigned("add_layer sample_expansion_factor", 4)


def parse_dlib_net(data: bytes, source: str = "<bytes>") -> DlibNet:
    """Decode a serialised dlib network held in memory (see :func:`read_dlib_net`)."""
    reader = _Reader(data, source)
    try:
        loss_version: int | None = reader.signed("loss layer version", 4)
    except DlibFormatError as error:
        if not data:
            raise
        loss_version = None
        found = f"({str(error).split(': ', 2)[-1]})"
    else:
        found = f"found {loss_version}"
    if loss_version != 1:
        raise reader.error(f"expected a dlib network, which starts with add_loss_layer's version 1; {found}", 0)
    loss = _details(reader, _LOSSES, "loss layer")
    # The wrappers' versions, from the output down; the input layer's name (a string of more than 3 bytes) ends them.
    wrappers: list[tuple[int, int]] = []
    while True:
        value = reader.peek_int()
        if value is None or not 1 <= value <= 3:
            break
        wrappers.append((reader.offset, reader.signed("wrapper version", 4)))
    if not wrappers or wrappers[-1][1] not in _INPUT_ADD_LAYER:
        where = wrappers[-1][0] if wrappers else reader.offset
        raise reader.error("expected the version (2 or 3) of the add_layer that wraps the input layer", where)
    input_level = wrappers[-1][1]
    for offset, version in wrappers[:-1]:
        if version not in (_TAG_OR_SKIP, _ADD_LAYER):
            raise reader.error(f"wrapper version {version}: expected 1 (tag or skip) or 2 (add_layer)", offset)
    num_layers = 1 + sum(version == _ADD_LAYER for _, version in wrappers[:-1])
    input_layer = _details(reader, _INPUTS, "input layer")
    layers = []
    for index in range(num_layers):
        layers.append(_details(reader, _LAYERS, f"layer {index} (from the input)"))
        _bookkeeping(reader, input_level if index == 0 else None)
    if reader.offset != len(reader.data):
        raise reader.error(
            f"{len(reader.data) - reader.offset} bytes left after the {num_layers} layers the header declares "
            "(not a network this reader understands, or two files concatenated)"
        )
    return DlibNet(source, loss, input_layer, tuple(layers), len(wrappers))


def read_dlib_net(path: str | os.PathLike[str]) -> DlibNet:
    """Read a dlib network file (``serialize(net, "file.dat")``) into its layers' parameters, without dlib.

    Args:
        path: The ``.dat`` file.

    Returns:
        A :class:`DlibNet`: the loss, the input layer and the computational layers from the input up.

    Raises:
        FileNotFoundError: no such file.
        DlibFormatError: the bytes are not a dlib network this reader understands (truncated, garbled, an unknown
            layer type); the message names the file and the byte offset.
    """
    path = Path(path)
    return parse_dlib_net(path.read_bytes(), str(path))
