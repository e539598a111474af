"""The files of an exported :class:`~lightning_margin.FaceEmbedder` and its ``huggingface_hub`` integration.

An export is a folder (or a Hub repository) holding ``model.safetensors`` (loading never unpickles anything),
``config.json`` (the constructor arguments, with ``architecture`` and ``library_version``) and a ``README.md`` card.
:class:`EmbedderHubMixin` gives ``FaceEmbedder`` ``save_pretrained`` (written atomically), ``from_pretrained`` (Hub
downloads checked against the Hub's hashes) and ``push_to_hub``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard, ModelHubMixin, constants, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from safetensors.torch import load_file, save_file

from lightning_margin._atomic import write_folder
from lightning_margin._version import __version__
from lightning_margin.hub import download_verified

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "EmbedderHubMixin"]

#: File names inside an exported folder / Hub repository.
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# Files that hold pickles: never loaded, named in the error when they are all a folder offers.
_PICKLE_WEIGHTS = ("pytorch_model.bin", "model.ckpt", "model.pt", "model.pth")


class EmbedderHubMixin(ModelHubMixin):
    """``ModelHubMixin`` for a model with a JSON-able ``config`` dict: safetensors weights, verified downloads.

    The class using it must be an ``nn.Module`` whose constructor takes the keys of ``config`` as arguments.
    """

    config: dict[str, Any]

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        force_download: bool = False,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
        **model_kwargs: Any,
    ) -> Any:
        """Load an embedder from an exported folder or a Hub repository, checking what is downloaded.

        ``huggingface_hub``'s ``ModelHubMixin.from_pretrained`` with one addition: for a Hub id, ``revision`` is
        resolved to a commit and ``config.json`` and ``model.safetensors`` are fetched with
        :func:`~lightning_margin.hub.download_verified` before anything is read, so a file that does not hash to what
        the Hub lists raises :class:`~lightning_margin.hub.CorruptDownloadError` (and leaves the cache) instead of
        being loaded. With ``local_files_only`` or ``HF_HUB_OFFLINE`` the cached files are used as they are (no
        request is made; files this method downloaded were checked then).

        Example:
            >>> embedder = FaceEmbedder.from_pretrained("ORG/arcface-r50")  # doctest: +SKIP
        """
        model_id = str(pretrained_model_name_or_path)
        if not os.path.isdir(model_id) and not local_files_only and not constants.HF_HUB_OFFLINE:
            files = download_verified(
                model_id,
                [CONFIG_NAME, WEIGHTS_NAME],
                revision=revision,
                cache_dir=cache_dir,
                token=token,
                force_download=force_download,
            )
            # The mixin now finds both files in the cache at that commit, without a request or a second download.
            revision, force_download = files.commit, False
        return super().from_pretrained(
            pretrained_model_name_or_path,
            force_download=force_download,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            revision=revision,
            **model_kwargs,
        )

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> str | None:
        """Write ``model.safetensors``, ``config.json`` and a card to ``save_directory`` (``ModelHubMixin`` API).

        The mixin deletes an existing ``config.json`` before writing, so a crash half way would lose a good export.
        Here everything is written into a hidden sibling folder first and then moved into place file by file
        (:func:`~lightning_margin._atomic.write_folder`; ``config.json`` last): a kill at any moment leaves the
        previous export or the new one, never a half-written file. Other files in the folder are kept, and an
        existing ``README.md`` is kept (as the mixin does). Keyword arguments go to ``ModelHubMixin.save_pretrained``
        (``push_to_hub``, ...).
        """
        target = Path(save_directory)
        if kwargs.get("push_to_hub") and kwargs.get("repo_id") is None:
            kwargs["repo_id"] = target.name  # the mixin's default, which would otherwise be the staging folder's name
        return write_folder(
            target,
            lambda staging: super(EmbedderHubMixin, self).save_pretrained(staging, **kwargs),
            merge=True,
            last=CONFIG_NAME,
            keep=("README.md",),
        )

    def _save_pretrained(self, save_directory: Path) -> None:
        """Write ``model.safetensors`` and ``config.json`` (the mixin then adds a README.md card if none exists)."""
        tensors = {key: value.detach().cpu().contiguous() for key, value in self.state_dict().items()}  # type: ignore[attr-defined]
        config = {"architecture": type(self).__name__, "library_name": "lightning-margin", **self.config}
        config["library_version"] = __version__
        # A fresh staging folder (see save_pretrained): a kill mid-write never touches the export.
        save_file(tensors, str(save_directory / WEIGHTS_NAME), metadata={"format": "pt"})
        (save_directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        config: dict[str, Any] | None = None,
        map_location: str | torch.device = "cpu",
        **model_kwargs: Any,
    ) -> Any:
        # The mixin has read config.json and turned its keys into model_kwargs; `config` is the whole file.
        if config is None:
            raise FileNotFoundError(f"{model_id}: no {CONFIG_NAME}; is this a lightning-margin FaceEmbedder?")
        architecture = config.get("architecture", cls.__name__)
        if architecture != cls.__name__:
            raise ValueError(f"{model_id}: {CONFIG_NAME} describes a {architecture!r}, not a {cls.__name__}")
        if os.path.isdir(model_id):
            weights: Path | None = Path(model_id) / WEIGHTS_NAME
            if not weights.is_file():
                weights = None
        else:
            try:
                weights = Path(
                    hf_hub_download(
                        repo_id=model_id,
                        filename=WEIGHTS_NAME,
                        revision=revision,
                        cache_dir=cache_dir,
                        force_download=force_download,
                        token=token,
                        local_files_only=local_files_only,
                    )
                )
            except EntryNotFoundError:
                weights = None
        if weights is None:
            # Deliberately no fallback to pytorch_model.bin or checkpoints: unpickling runs arbitrary code.
            raise FileNotFoundError(
                f"{model_id}: no {WEIGHTS_NAME}. FaceEmbedder loads safetensors weights only and never unpickles "
                f"({', '.join(_PICKLE_WEIGHTS)} are ignored); convert a Lightning checkpoint with "
                "`lightning-margin export CHECKPOINT FOLDER`"
            )
        model = cls(**model_kwargs)
        state_dict = load_file(str(weights), device=str(map_location))
        model.load_state_dict(state_dict, strict=True)  # type: ignore[attr-defined]
        return model.eval()  # type: ignore[attr-defined]

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """The Hub model card for this embedder, without evaluation results (``publish`` adds them)."""
        from lightning_margin.model_card import build_model_card

        return build_model_card(self.config, **kwargs)
