"""The base class of every margin head: one weight matrix, input checks, fp32 maths, cross-entropy."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_margin._validation import check_choice, check_integer
from lightning_margin.functional import (
    gather_rows,
    normalized_linear,
    paired_cosines,
    replace_target_logits,
    row_ids,
    scaled_directions,
    straight_through,
)

__all__ = ["MARGIN_GRADIENTS", "CosineMarginHead", "MarginHead"]

#: The backward passes a margin head offers for its true-class logit (the ``gradient`` argument of the
#: additive-angular heads): the exact derivative of the margin, or insightface's straight-through one.
MARGIN_GRADIENTS: tuple[str, ...] = ("exact", "straight_through")


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float32 for half-precision inputs, float64 stays float64 (gradcheck)."""
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


class _RecordsInitArguments:
    """Keeps the constructor's arguments on the instance, bound before ``__init__`` runs (see ``MarginHead.hparams``).

    ``__new__`` lives on this base, not on ``MarginHead``, so that ``inspect.signature`` of a head class still finds
    the head's ``__init__`` (it prefers a ``__new__`` met first in the MRO).
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        instance = super().__new__(cls)
        try:
            bound = inspect.signature(cls.__init__).bind(instance, *args, **kwargs)
        except TypeError:  # copy and pickle call __new__ without arguments, then restore __dict__ themselves
            return instance
        bound.apply_defaults()
        arguments: dict[str, Any] = {}
        for name, parameter in list(bound.signature.parameters.items())[1:]:
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                arguments.update(bound.arguments.get(name, {}))
            elif parameter.kind is not inspect.Parameter.VAR_POSITIONAL:
                arguments[name] = bound.arguments[name]
        object.__setattr__(instance, "_init_arguments", arguments)  # before nn.Module.__init__: a plain attribute
        return instance


class MarginHead(_RecordsInitArguments, nn.Module):
    """A classifier over ``num_classes`` identities whose loss is softmax cross-entropy on margin-penalised logits.

    This class owns ``weight`` (``[num_classes * rows_per_class, embedding_size]``, :class:`torch.nn.Linear`'s
    layout), checks inputs, and runs the maths in float32 (float64 if the inputs or weights are float64) with
    autocast disabled, whatever precision the backbone runs in: margins are differences of cosines near 1, which
    bf16/fp16 cannot resolve.

    A head's logits are assembled from a few pieces, its public API, and every path computes the loss from those
    same pieces: :meth:`forward` / :meth:`logits` on one device, and the sharded, chunked and Partial FC loss of
    :mod:`lightning_margin.parallel`, which sees only a block of classes at a time and the true class's rows on
    the rank that holds them. With ``x`` the full-precision embeddings and ``y`` the labels:

    1. ``features = logit_features(x)``; the logits of any block of classes are
       ``class_logits(features, *rows)``, from the rows of :meth:`class_parameters` of those classes, with the
       sub-centres reduced by :meth:`reduce_subcenters`.
    2. ``inputs = target_inputs(x, true_class_rows)``, ``[B, k]``: what the margin needs from the true class's
       own rows (``cos theta_y`` for cosine heads).
    3. In training, ``update_statistics(x, y, inputs)`` moves the running buffers, before any logit.
    4. ``target_logits(inputs, x, y)``: the margin-penalised true-class logit, ``[B]``.
    5. Every other class's logit is ``non_target_logits(class_logits(...), target_logits)``; the true class's
       entry is replaced by the target logit; :meth:`regularizer` is added to the mean cross-entropy.

    The default pieces are a bias-free linear layer without margin. A head registered with
    :func:`~lightning_margin.heads.register_head` that overrides only these pieces (not :meth:`_logits`) works
    sharded, chunked and with Partial FC without further code, provided that:

    - :meth:`class_parameters` are the head's own parameters (attributes named as the keys), class-major with
      ``rows_per_class`` (or 1) rows per class; other parameters and buffers are replicated on every rank;
    - :meth:`class_logits` and :meth:`non_target_logits` use only their arguments and the head's hyperparameters
      and buffers (never ``self.weight``: they get a block, a sample or a shard of the rows), and act on each
      ``(row, class)`` entry independently of the other classes;
    - :meth:`target_inputs` uses only the true class's rows, and each of its columns is a value that the
      sharded loss may compute on the rank holding the class and sum over ranks (zero elsewhere);
    - :meth:`update_statistics` depends only on its arguments, so that every rank moves its buffers alike;
    - :meth:`plain_target_logits` is the true class's entry of :meth:`class_logits` (the one-device path swaps
      it for the target logit), and :meth:`regularizer` is a function of ``x`` alone (sharded, of the gathered
      batch).

    The pieces get full-precision ``x`` (float32 or float64, autocast off) and do not check their inputs;
    :meth:`forward` and :meth:`logits` do. A subclass may still override :meth:`_logits` for a faster one-device
    path (plain softmax skips its no-op margin), but it must give what the pieces give.

    Args:
        embedding_size: Width ``D`` of the embeddings.
        num_classes: Number of identities ``C``.
        rows_per_class: Weight rows per class (sub-centres); 1 for every head but :class:`SubCenterArcFace`.
    """

    # Whether the one-device path may give the true-class rows a sparse gradient (gather_rows), which autograd adds
    # into the dense one without a second [C, D] buffer: only where class_logits always gives every class parameter
    # a dense gradient (a sparse one alone would reach the parameter otherwise, e.g. for an undefined grad output).
    _sparse_target_rows: bool = False

    def __init__(self, embedding_size: int, num_classes: int, *, rows_per_class: int = 1) -> None:
        super().__init__()
        self.embedding_size = check_integer("embedding_size", embedding_size)
        self.num_classes = check_integer("num_classes", num_classes)
        self.rows_per_class = check_integer("rows_per_class", rows_per_class)
        self.weight = nn.Parameter(torch.empty(self.num_classes * self.rows_per_class, self.embedding_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise ``weight``: N(0, 0.01) as insightface does; only its row directions matter to cosine heads."""
        nn.init.normal_(self.weight, std=0.01)

    # ---- public API -------------------------------------------------------------------------------------------

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Mean cross-entropy of the margin logits (plus the head's own regulariser, if its paper has one)."""
        if labels is None:
            raise ValueError(f"{type(self).__name__}.forward needs labels; use .logits(embeddings) for inference")
        self._check_inputs(embeddings, labels)
        with self._full_precision(embeddings):
            x = embeddings.to(_compute_dtype(embeddings, self.weight))
            if self.training:
                with torch.no_grad():
                    rows = self._true_class_rows(x, labels)
                    self.update_statistics(x, labels, self.target_inputs(x, rows))
            loss = F.cross_entropy(self._logits(x, labels), labels)
            return loss + self.regularizer(x)

    def logits(self, embeddings: Tensor, labels: Tensor | None = None) -> Tensor:
        """``[B, num_classes]`` logits: with labels, exactly what the loss's softmax sees; without, no margin."""
        self._check_inputs(embeddings, labels)
        with self._full_precision(embeddings):
            return self._logits(embeddings.to(_compute_dtype(embeddings, self.weight)), labels)

    # ---- the pieces of the logits (see the class docstring; the sharded, chunked and Partial FC loss use them) ---

    def class_parameters(self) -> dict[str, Tensor]:
        """The class-major parameters by attribute name: rows ``j * k .. j * k + k - 1`` belong to class ``j``.

        These are what the sharded loss splits across ranks, Partial FC samples and the chunked loss walks over;
        ``{"weight": weight}`` by default (plain softmax adds its ``bias``).

        Example:
            >>> from lightning_margin.heads import Softmax
            >>> parameters = Softmax(embedding_size=4, num_classes=3).class_parameters()
            >>> {name: tuple(parameter.shape) for name, parameter in parameters.items()}
            {'weight': (3, 4), 'bias': (3,)}
        """
        return {"weight": self.weight}

    def logit_features(self, x: Tensor) -> Tensor:
        """What every class row multiplies, ``[B, F]``: ``x`` itself by default, ``s x / ||x||`` for cosine heads.

        Example:
            >>> from lightning_margin.heads import CosFace
            >>> CosFace(embedding_size=2, num_classes=3, scale=10.0).logit_features(torch.tensor([[3.0, 4.0]]))
            tensor([[6., 8.]])
        """
        return x

    def class_logits(self, features: Tensor, weight: Tensor, *others: Tensor) -> Tensor:
        """Logits ``[B, n]`` of a block of ``n`` classes without margin, from those classes' parameter rows.

        ``weight`` (and ``others``, the further :meth:`class_parameters`) hold the block's rows only, so this must
        not read ``self.weight``. The default is ``features @ weight.T``, reduced over sub-centres.

        Example:
            >>> head = MarginHead(embedding_size=2, num_classes=2)
            >>> head.class_logits(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 0.0], [0.0, 3.0]]))
            tensor([[1., 6.]])
        """
        return self.reduce_subcenters(F.linear(features, weight.to(features.dtype)))

    def reduce_subcenters(self, logits: Tensor) -> Tensor:
        """Sub-center ArcFace (Deng et al., 2020): ``[B, n * k]`` per-row values to ``[B, n]``, the max over each
        class's ``k = rows_per_class`` rows; the identity for one row per class.

        A positive scale commutes with the max, so scaled logits and cosines reduce alike.

        Example:
            >>> head = MarginHead(embedding_size=2, num_classes=2, rows_per_class=3)
            >>> head.reduce_subcenters(torch.tensor([[0.1, 0.7, 0.3, -0.2, -0.5, 0.4]]))
            tensor([[0.7000, 0.4000]])
        """
        if self.rows_per_class == 1:
            return logits
        # max(dim) keeps the indices for backward, not the output, so the caller may modify the result in place.
        return logits.view(logits.shape[0], -1, self.rows_per_class).max(dim=2).values

    def target_inputs(self, x: Tensor, rows: Sequence[Tensor]) -> Tensor:
        """``[B, k]``: what the true-class logit needs from the true class's own rows, computed where they live.

        ``rows`` holds, for each of :meth:`class_parameters`, the rows of every embedding's true class
        (``[B * rows_per_class, ...]``). Each column must be a value the sharded loss can take from the rank that
        holds the class (it sums them over ranks, zero elsewhere). By default the plain logit ``x . W_y``; cosine
        heads return ``cos theta_y``.

        Example:
            >>> head = MarginHead(embedding_size=2, num_classes=3)
            >>> head.target_inputs(torch.tensor([[1.0, 2.0]]), [torch.tensor([[3.0, 1.0]])])
            tensor([[5.]])
        """
        weight = rows[0].to(x.dtype).view(x.shape[0], -1, x.shape[1])
        return self.reduce_subcenters((x.unsqueeze(1) * weight).sum(dim=2))

    def target_logits(self, inputs: Tensor, x: Tensor, labels: Tensor) -> Tensor:
        """The margin-penalised true-class logit ``[B]`` from :meth:`target_inputs`; no margin by default.

        Example:
            >>> head = MarginHead(embedding_size=2, num_classes=3)
            >>> head.target_logits(torch.tensor([[5.0]]), torch.tensor([[1.0, 2.0]]), torch.tensor([1]))
            tensor([5.])
        """
        return inputs[:, 0]

    def plain_target_logits(self, inputs: Tensor, x: Tensor) -> Tensor:
        """The true class's logit *without* margin ``[B]``, as :meth:`class_logits` gives it, from the inputs.

        The one-device path adds ``target_logits - plain_target_logits`` at the true class in place (a
        ``scatter_add_``, whose backward is the identity) instead of rewriting the ``[B, C]`` logits.

        Example:
            >>> head = MarginHead(embedding_size=2, num_classes=3)
            >>> head.plain_target_logits(torch.tensor([[5.0]]), torch.tensor([[1.0, 2.0]]))
            tensor([5.])
        """
        return inputs[:, 0]

    def non_target_logits(self, logits: Tensor, target_logits: Tensor) -> Tensor:
        """The logits of the classes other than the true one, from their plain logits ``[B, n]``; the identity
        by default (CurricularFace, Huang et al., 2020, re-weights the hard negatives).

        ``target_logits`` (``[B]``, no gradient) are each row's margin-penalised true-class logits. Every entry
        must depend only on itself and its row's target logit: the loss applies this to blocks of classes.

        Example:
            >>> head = MarginHead(embedding_size=2, num_classes=3)
            >>> head.non_target_logits(torch.tensor([[1.0, 2.0]]), torch.tensor([1.5]))
            tensor([[1., 2.]])
        """
        return logits

    def update_statistics(self, x: Tensor, labels: Tensor, inputs: Tensor) -> None:
        """Update running buffers from a training batch (AdaFace's norm statistics, CurricularFace's ``t``).

        Called without gradient once per training step, before any logit, on the whole (all-gathered) batch with
        its :meth:`target_inputs`; it must depend on these arguments only. Nothing by default.

        Example:
            >>> head = MarginHead(embedding_size=2, num_classes=3)
            >>> head.update_statistics(torch.ones(1, 2), torch.tensor([0]), torch.ones(1, 1)) is None
            True
        """

    def regularizer(self, x: Tensor) -> Tensor | float:
        """A term added to the mean cross-entropy (MagFace's norm regulariser); 0 by default.

        Example:
            >>> MarginHead(embedding_size=2, num_classes=3).regularizer(torch.ones(1, 2))
            0.0
        """
        return 0.0

    # ---- the one-device logits, from the pieces ---------------------------------------------------------------

    def _logits(self, x: Tensor, labels: Tensor | None) -> Tensor:
        """Logits from full-precision embeddings ``x``; margin on the true class when ``labels`` is given."""
        logits = self.class_logits(self.logit_features(x), *self.class_parameters().values())
        if labels is None:
            return logits
        inputs = self.target_inputs(x, self._true_class_rows(x, labels))
        target = self.target_logits(inputs, x, labels)
        threshold = target.detach()
        logits = self.non_target_logits(logits, threshold)
        # The entry the matrix holds at the true class, recomputed from the true class's rows.
        plain = self.non_target_logits(self.plain_target_logits(inputs, x).unsqueeze(1), threshold).squeeze(1)
        return replace_target_logits(logits, labels, target, plain)

    def _true_class_rows(self, x: Tensor, labels: Tensor) -> list[Tensor]:
        """Each class parameter's rows of every label (see :attr:`_sparse_target_rows` for their gradient)."""
        rows = []
        for parameter in self.class_parameters().values():
            ids = row_ids(labels, parameter.shape[0] // self.num_classes)
            selected = gather_rows(parameter, ids) if self._sparse_target_rows else parameter.index_select(0, ids)
            rows.append(selected.to(x.dtype))
        return rows

    # ---- helpers ----------------------------------------------------------------------------------------------

    @staticmethod
    def _full_precision(embeddings: Tensor):
        device_type = embeddings.device.type
        if torch.amp.is_autocast_available(device_type):
            return torch.autocast(device_type=device_type, enabled=False)
        return nullcontext()

    def _check_inputs(self, embeddings: Tensor, labels: Tensor | None) -> None:
        name = type(self).__name__
        if not isinstance(embeddings, Tensor) or embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_size:
            shape = tuple(embeddings.shape) if isinstance(embeddings, Tensor) else type(embeddings).__name__
            raise ValueError(f"{name} expects embeddings of shape [batch, {self.embedding_size}], got {shape}")
        if labels is not None:
            if labels.ndim != 1 or labels.shape[0] != embeddings.shape[0]:
                raise ValueError(
                    f"{name} expects labels of shape [{embeddings.shape[0]}] (one per embedding), "
                    f"got {tuple(labels.shape)}"
                )
            if labels.dtype.is_floating_point or labels.dtype == torch.bool:
                raise ValueError(f"{name} expects integer class labels, got dtype {labels.dtype}")
        # One combined reduction, so a GPU step pays for a single host sync.
        bad = ~torch.isfinite(embeddings).all()
        if labels is not None and labels.numel():
            bad = bad | (labels.min() < 0) | (labels.max() >= self.num_classes)
        if bool(bad):
            finite = torch.isfinite(embeddings)
            if not finite.all():
                rows = (~finite).any(dim=1).nonzero().flatten().tolist()
                raise ValueError(
                    f"{name} got non-finite (NaN or inf) embeddings in {len(rows)} of {embeddings.shape[0]} rows "
                    f"(first rows: {rows[:5]})"
                )
            raise ValueError(
                f"{name} expects labels in [0, {self.num_classes}), got values from {int(labels.min())} "
                f"to {int(labels.max())}"
            )

    def extra_repr(self) -> str:
        parts = [f"embedding_size={self.embedding_size}", f"num_classes={self.num_classes}"]
        parts += [f"{name}={getattr(self, name)!r}" for name in self._hyperparameter_names()]
        if getattr(self, "gradient", "exact") != "exact":  # shown when it departs from the default only
            parts.append(f"gradient={self.gradient!r}")
        return ", ".join(parts)

    def _hyperparameter_names(self) -> list[str]:
        return []

    # ---- the head's record: what rebuilds it (configs, checkpoints, model cards) --------------------------------

    @property
    def hparams(self) -> dict[str, Any]:
        """The head's hyperparameters: the arguments it was constructed with, except ``embedding_size`` and
        ``num_classes``, defaults included. Attributes that a schedule moves later (``margin``, ``lambda_``) keep
        their constructor values here, so ``type(head)(embedding_size, num_classes, **head.hparams)`` rebuilds it.

        Example:
            >>> from lightning_margin.heads import ArcFace
            >>> ArcFace(embedding_size=8, num_classes=4, margin=0.3).hparams
            {'scale': 64.0, 'margin': 0.3, 'easy_margin': False, 'gradient': 'exact'}
        """
        arguments = getattr(self, "_init_arguments", {})
        return {name: value for name, value in arguments.items() if name not in ("embedding_size", "num_classes")}


class CosineMarginHead(MarginHead):
    """Base of the heads whose logits are ``s(x) cos(theta)`` with a margin on the true class's cosine.

    Subclasses implement :meth:`apply_margin` (the penalised true-class cosine) and may override
    :meth:`logit_scale` (a per-sample scale such as SphereFace's ``||x||``), :meth:`non_target_logits` and
    :meth:`update_statistics`; sub-centres come with ``rows_per_class > 1``. Such a head meets
    :class:`MarginHead`'s contract as long as those use only their arguments, hyperparameters and buffers, so it
    runs sharded, chunked and with Partial FC as it is.

    The backward pass through the margin is :attr:`gradient`: ``"exact"`` (the default: the derivative of
    ``apply_margin``) or ``"straight_through"`` (the penalised cosine in the forward pass, the identity in the
    backward pass, as insightface's ArcFace/CombinedMarginLoss compute it under ``no_grad``; see
    :func:`~lightning_margin.functional.straight_through`). A head offers the choice by taking a ``gradient``
    argument and calling :meth:`_set_gradient`; the others stay exact. Every path (one device, sharded, chunked,
    Partial FC) gets the true-class logit from :meth:`target_logits`, so the choice holds on all of them.

    Example:
        >>> from lightning_margin.functional import cosface_margin
        >>> class HalfCosFace(CosineMarginHead):  # with @register_head("half_cosface") it is built by name
        ...     scale = 16.0
        ...
        ...     def apply_margin(self, cos, x, labels):
        ...         return cosface_margin(cos, 0.5 * (1.0 - cos))  # a margin that shrinks as cos -> 1
        >>> head = HalfCosFace(embedding_size=2, num_classes=2)
        >>> with torch.no_grad():
        ...     _ = head.weight.copy_(torch.eye(2))
        >>> head.logits(torch.tensor([[1.0, 1.0]]), torch.tensor([0])).detach()  # cos = 0.7071 to both classes
        tensor([[ 8.9706, 11.3137]])
    """

    scale: float
    #: The backward pass through the margin, one of :data:`MARGIN_GRADIENTS`.
    gradient: str = "exact"
    _sparse_target_rows = True  # normalized_linear's backward always returns a dense weight gradient

    def _set_gradient(self, gradient: str) -> None:
        """Validate and set :attr:`gradient` (``ValueError`` naming :data:`MARGIN_GRADIENTS` otherwise)."""
        self.gradient = check_choice("gradient", gradient, MARGIN_GRADIENTS)

    def logit_scale(self, x: Tensor) -> float | Tensor:
        """The factor on every cosine: the fixed ``scale`` hyperparameter, or a ``[B]`` tensor such as ``||x||``.

        Example:
            >>> from lightning_margin.heads import CosFace
            >>> CosFace(embedding_size=2, num_classes=3, scale=30.0).logit_scale(torch.ones(1, 2))
            30.0
        """
        return self.scale

    def apply_margin(self, cos: Tensor, x: Tensor, labels: Tensor) -> Tensor:
        """The margin-penalised true-class cosine ``[B]`` from ``cos theta_y`` (clamped to [-1, 1]); the identity
        for heads without a margin.

        Example:
            >>> from lightning_margin.heads import CosFace
            >>> head = CosFace(embedding_size=2, num_classes=3, margin=0.25)
            >>> head.apply_margin(torch.tensor([0.5]), torch.ones(1, 2), torch.tensor([0]))
            tensor([0.2500])
        """
        return cos

    def logit_features(self, x: Tensor) -> Tensor:
        return scaled_directions(x, self.logit_scale(x))

    def class_logits(self, features: Tensor, weight: Tensor, *others: Tensor) -> Tensor:
        # The output may be modified in place (the one-device path adds the margin with scatter_add_).
        return self.reduce_subcenters(normalized_linear(features, weight.to(features.dtype)))

    def target_inputs(self, x: Tensor, rows: Sequence[Tensor]) -> Tensor:
        """``[B, 1]``: ``cos theta_y``, the maximum over the true class's sub-centres.

        Example:
            >>> from lightning_margin.heads import ArcFace
            >>> head = ArcFace(embedding_size=2, num_classes=3)
            >>> head.target_inputs(torch.tensor([[1.0, 1.0]]), [torch.tensor([[0.0, 5.0]])])
            tensor([[0.7071]])
        """
        return self.reduce_subcenters(paired_cosines(x, rows[0].to(x.dtype)))

    def target_logits(self, inputs: Tensor, x: Tensor, labels: Tensor) -> Tensor:
        """``s(x) * apply_margin(cos theta_y)``: the true-class logit from its cosine; with
        ``gradient="straight_through"`` its backward pass treats the margin as the identity.

        Example:
            >>> from lightning_margin.heads import CosFace
            >>> head = CosFace(embedding_size=2, num_classes=3, scale=10.0, margin=0.25)
            >>> head.target_logits(torch.tensor([[0.5]]), torch.ones(1, 2), torch.tensor([0]))
            tensor([2.5000])
        """
        cos = inputs[:, 0].clamp(-1.0, 1.0)
        penalised = self.apply_margin(cos, x, labels)
        if self.gradient == "straight_through":
            penalised = straight_through(penalised, cos)
        return self.logit_scale(x) * penalised

    def plain_target_logits(self, inputs: Tensor, x: Tensor) -> Tensor:
        return self.logit_scale(x) * inputs[:, 0]

    def _hyperparameter_names(self) -> list[str]:
        return ["scale"]
