"""Hub faults: damaged downloads are refused, and a publish that fails half way can be finished by running it again.

Everything runs against the local Hub server (``tests/hub_server.py``) with the real ``huggingface_hub`` client, in
this process with an explicit ``endpoint=`` (see ``tests/test_publish_verify.py`` for why the environment cannot point
this process's client elsewhere), except the last test, which runs the commands in one subprocess. The server stores
``*.safetensors`` through git-lfs as the Hub does; its LFS endpoint speaks the legacy protocol, not Xet, hence
``HF_HUB_DISABLE_XET``.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, hf_hub_download, try_to_load_from_cache
from huggingface_hub import constants as hub_constants
from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

import lightning_margin.publish as publish_module
from lightning_margin.hub import CorruptDownloadError, UploadError, download_verified
from lightning_margin.publish import publish
from tests.hub_server import HubServer, git_blob_sha1, run_script_against_hub
from tests.test_embedder import INPUT_SIZE, tiny_module

EXPORT = ["README.md", "config.json", "metrics.json", "model.safetensors"]


@pytest.fixture(autouse=True)
def _client(monkeypatch):
    # Read by huggingface_hub at call time: the test server has no Xet storage, and write calls want a token.
    monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    bars_were_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    yield
    if not bars_were_disabled:
        enable_progress_bars()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A checkpoint as Lightning writes it for FaceDataModule training, without a Trainer (faster; weights as built)."""
    torch.manual_seed(0)
    module = tiny_module()
    data = {"train": "synthetic:8", "val_sets": {"synthetic": "synthetic:40"}, "image_size": INPUT_SIZE}
    path = tmp_path_factory.mktemp("hub_faults") / "tiny.ckpt"
    torch.save(
        {
            "hyper_parameters": dict(module.hparams),
            "state_dict": module.state_dict(),
            "datamodule_hyper_parameters": data,
        },
        path,
    )
    return path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def folder_hashes(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): sha256(path.read_bytes()) for path in folder.rglob("*") if path.is_file()
    }


def hub_commit(hub: HubServer, repo_id: str = "org/model") -> str:
    return HfApi(endpoint=hub.url).model_info(repo_id).sha


def flip_first_byte(data: bytes) -> bytes:
    return bytes([data[0] ^ 0xFF]) + data[1:]


def upload(hub: HubServer, repo_id: str, files: dict[str, bytes], folder: Path) -> None:
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    api = HfApi(endpoint=hub.url)
    api.create_repo(repo_id)
    api.upload_folder(repo_id=repo_id, folder_path=folder)


FILES = {
    "config.json": json.dumps({"embedding_size": 512}).encode(),
    "model.safetensors": random.Random(0).randbytes(4096),
}


def hub_hash(filename: str, data: bytes) -> str:
    """The hash the Hub lists: the content's sha256 for the LFS file, the git blob sha1 for the regular one."""
    return sha256(data) if filename.endswith(".safetensors") else git_blob_sha1(data)


@pytest.mark.parametrize("filename", ["model.safetensors", "config.json"])
def test_same_length_tampering_passes_huggingface_hub_but_not_download_verified(filename, tmp_path):
    with HubServer(lfs_patterns=["*.safetensors"]) as hub:
        upload(hub, "org/model", FILES, tmp_path / "upload")
        assert hub.lfs_files("org/model") == {"model.safetensors"}
        tampered = flip_first_byte(FILES[filename])
        hub.tamper(filename, flip_first_byte, times=2)

        # A fresh download of wrong bytes is refused and leaves nothing in the cache for an offline load.
        mismatch = (
            f"{filename}: .* expected {hub_hash(filename, FILES[filename])}, received {hub_hash(filename, tampered)}"
        )
        with pytest.raises(CorruptDownloadError, match=mismatch):
            download_verified("org/model", [filename], cache_dir=tmp_path / "a", endpoint=hub.url)
        assert not isinstance(try_to_load_from_cache("org/model", filename, cache_dir=tmp_path / "a"), str)

        # huggingface_hub alone keeps them: it compares sizes only.
        path = hf_hub_download("org/model", filename, cache_dir=tmp_path / "b", endpoint=hub.url)
        assert Path(path).read_bytes() == tampered
        # The same check finds them in a cache filled that way, and removes them.
        with pytest.raises(CorruptDownloadError, match=filename):
            download_verified("org/model", [filename, "config.json"], cache_dir=tmp_path / "b", endpoint=hub.url)
        assert not isinstance(try_to_load_from_cache("org/model", filename, cache_dir=tmp_path / "b"), str)

        # The server is healthy again: the next call downloads the right bytes.
        files = download_verified("org/model", [filename, "absent.txt"], cache_dir=tmp_path / "b", endpoint=hub.url)
        assert files.paths[filename].read_bytes() == FILES[filename]
        assert "absent.txt" not in files.paths
        assert files.commit == hub_commit(hub)


@pytest.mark.parametrize("announce_served_size", [False, True], ids=["size-announced", "size-consistent"])
@pytest.mark.parametrize("filename", ["model.safetensors", "config.json"])
def test_a_truncated_body_is_refused_and_not_cached(filename, announce_served_size, tmp_path):
    with HubServer(lfs_patterns=["*.safetensors"]) as hub:
        upload(hub, "org/model", FILES, tmp_path / "upload")
        hub.tamper(filename, lambda data: data[: len(data) // 2], announce_served_size=announce_served_size)
        if announce_served_size:
            # A server that serves a short copy and announces its size: only the hash can tell.
            mismatch = f"{filename}: .* expected {hub_hash(filename, FILES[filename])}"
            error = pytest.raises(CorruptDownloadError, match=mismatch)
        else:
            # The Hub announced the full size: huggingface_hub's own size check refuses the short body.
            error = pytest.raises(OSError, match="Consistency check failed")
        with error:
            download_verified("org/model", [filename], cache_dir=tmp_path / "cache", endpoint=hub.url)
        assert not isinstance(try_to_load_from_cache("org/model", filename, cache_dir=tmp_path / "cache"), str)
        truncated = FILES[filename][: len(FILES[filename]) // 2]
        cached = [path.read_bytes() for path in (tmp_path / "cache").rglob("*") if path.is_file()]
        assert truncated not in cached


def test_commit_failure_leaves_the_export_intact_says_what_arrived_and_a_rerun_finishes(checkpoint, tmp_path):
    out = tmp_path / "export"
    with HubServer(lfs_patterns=["*.safetensors"]) as hub:
        at_first_request: list[dict[str, str]] = []

        def snapshot_export(method: str, path: str) -> None:
            if not at_first_request:
                at_first_request.append(folder_hashes(out))

        hub.request_hook = snapshot_export
        hub.fail("commit", status=500)
        with pytest.raises(UploadError) as failure:
            publish(checkpoint, "org/model", output_dir=out, endpoint=hub.url, progress=False)
        error = failure.value
        # The export was complete before the first request and the failed upload did not touch it.
        assert sorted(at_first_request[0]) == EXPORT
        assert folder_hashes(out) == at_first_request[0]
        assert (error.uploaded, error.not_uploaded) == ([], EXPORT)
        message = str(error)
        assert "failed: HTTP 500 from POST" in message and "commit/main: injected fault: HTTP 500 on commit" in message
        assert f"uploaded none of the files; not uploaded: {', '.join(EXPORT)}." in message
        assert f"left unchanged in {out}" in message and "Run the same command again" in message
        # The LFS object was sent before the commit, so storage holds it while the repository does not.
        weights = (out / "model.safetensors").read_bytes()
        assert sha256(weights) in hub.lfs_objects
        assert set(hub.files("org/model")) == {".gitattributes"}

        hub.requests.clear()
        result = publish(checkpoint, "org/model", output_dir=out, endpoint=hub.url, progress=False)
        assert result.commit_url is not None and result.commit_url.endswith(hub_commit(hub))
        assert not [path for method, path in hub.requests if method == "PUT"]  # weights not sent again
        assert folder_hashes(out) == at_first_request[0]  # the rerun writes the same export
        published = hub.files("org/model")
        assert {name: sha256(published[name]) for name in EXPORT} == at_first_request[0]
        assert hub.lfs_files("org/model") == {"model.safetensors"}


def test_a_failed_lfs_upload_commits_nothing_and_the_rerun_sends_only_what_is_missing(checkpoint, tmp_path):
    out = tmp_path / "export"
    # config.json and metrics.json through LFS too: three uploads, of which the second fails for good (a 403 is not
    # retried, a 500 would be: see the next test).
    with HubServer(lfs_patterns=["*.safetensors", "*.json"]) as hub:
        hub.fail("lfs-upload", status=403, skip=1)
        with pytest.raises(UploadError) as failure:
            publish(checkpoint, "org/model", output_dir=out, endpoint=hub.url, progress=False)
        assert (failure.value.uploaded, failure.value.not_uploaded) == ([], EXPORT)
        assert "to the Hub. <- HTTP 403 from PUT" in str(failure.value)
        assert "injected fault: HTTP 403 on lfs-upload" in str(failure.value)
        assert set(hub.files("org/model")) == {".gitattributes"}
        assert len(hub.lfs_objects) == 2

        hub.requests.clear()
        publish(checkpoint, "org/model", output_dir=out, endpoint=hub.url, progress=False)
        assert len([path for method, path in hub.requests if method == "PUT"]) == 1
        published = hub.files("org/model")
        assert {name: sha256(published[name]) for name in EXPORT} == folder_hashes(out)
        assert hub.lfs_files("org/model") == {"config.json", "metrics.json", "model.safetensors"}


def test_when_the_repository_cannot_be_created_the_message_says_nothing_arrived(checkpoint, tmp_path):
    with HubServer() as hub:
        hub.fail("create", status=500)
        with pytest.raises(UploadError, match="org/model does not exist on the Hub: none of the files") as failure:
            publish(checkpoint, "org/model", output_dir=tmp_path / "export", endpoint=hub.url, progress=False)
        assert (failure.value.uploaded, failure.value.not_uploaded) == ([], EXPORT)


def test_an_unreachable_hub_fails_fast_and_keeps_the_temporary_export(checkpoint, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    def asks_again(*args, **kwargs):  # would wait through huggingface_hub's retries (about 25 s) for the same failure
        pytest.fail("publish asked the unreachable Hub which files arrived")

    monkeypatch.setattr(HfApi, "verify_repo_checksums", asks_again)
    with HubServer() as hub:
        endpoint = hub.url  # nothing listens there once the server has stopped
    with pytest.raises(UploadError, match="The Hub did not answer, so which files arrived is not known") as failure:
        publish(checkpoint, "org/model", endpoint=endpoint, progress=False)
    error = failure.value
    try:
        assert (error.uploaded, error.not_uploaded) == (None, None)
        assert f"kept unchanged in {error.folder}" in str(error)
        assert sorted(folder_hashes(error.folder)) == EXPORT
    finally:
        shutil.rmtree(error.folder)


def test_transient_server_errors_are_retried_by_huggingface_hub(checkpoint, tmp_path):
    with HubServer(lfs_patterns=["*.safetensors"]) as hub:
        hub.fail("preupload", status=500)
        hub.fail("lfs-upload", status=503)
        result = publish(checkpoint, "org/model", output_dir=tmp_path / "export", endpoint=hub.url, progress=False)
        assert result.commit_url is not None
        # One failed and one successful request each (huggingface_hub waited 1 s before each retry).
        assert [path.rsplit("/", 2)[-2] for method, path in hub.requests if "preupload" in path] == ["preupload"] * 2
        assert len([path for method, path in hub.requests if method == "PUT"]) == 2
        assert sorted(set(hub.files("org/model")) - {".gitattributes"}) == EXPORT


def test_with_hf_xet_installed_huggingface_hub_retries_the_commit_as_well(checkpoint, tmp_path, monkeypatch):
    pytest.importorskip("hf_xet")
    # upload_folder's Xet pipeline (the default when hf_xet is installed) posts the commit with retries; the server
    # answers "regular" for every file here, so no Xet storage is needed.
    monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_XET", False)
    with HubServer() as hub:
        hub.fail("commit", status=500)
        publish(checkpoint, "org/model", output_dir=tmp_path / "export", endpoint=hub.url, progress=False)
        assert len([path for method, path in hub.requests if path.endswith("/commit/main")]) == 2
        assert sorted(set(hub.files("org/model")) - {".gitattributes"}) == EXPORT


def test_an_output_dir_holding_other_files_is_refused_before_the_evaluation(checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "project"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    monkeypatch.setattr(publish_module, "evaluate_embedder", lambda *args, **kwargs: pytest.fail("evaluated"))
    with pytest.raises(ValueError, match=r"holds files publish does not write \(notes.txt\)"):
        publish(checkpoint, "org/model", output_dir=out, push=False)
    assert [path.name for path in out.iterdir()] == ["notes.txt"]


def test_the_export_is_replaced_whole_and_a_failed_write_keeps_the_previous_one(checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "export"
    publish(checkpoint, "org/model", output_dir=out, push=False, progress=False)
    (out / "model.onnx").write_bytes(b"an export of another run")
    previous = folder_hashes(out)

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(publish_module, "write_metrics_json", disk_full)
        with pytest.raises(OSError, match="No space left"):
            publish(checkpoint, "org/model", output_dir=out, push=False, progress=False)
    assert folder_hashes(out) == previous
    assert [path.name for path in tmp_path.iterdir()] == ["export"]  # no staging folder left behind

    publish(checkpoint, "org/model", output_dir=out, push=False, progress=False)
    # The stale ONNX file of another run is gone: an upload of this folder cannot ship it.
    assert sorted(folder_hashes(out)) == EXPORT
    assert {name: previous[name] for name in EXPORT} == folder_hashes(out)


# Runs in a fresh interpreter with HF_ENDPOINT pointing at the test server; prints one JSON line of results.
_COMMANDS = r"""
import json, sys
import torch
from lightning_margin import publish, verify
from lightning_margin.embedder import FaceEmbedder

checkpoint, repo, out = sys.argv[1:4]
command = [checkpoint, "--repo-id", repo, "--output-dir", out, "--no-progress"]
status = {"publish": publish.main(command)}
print("<<next command>>", file=sys.stderr)
status["publish again"] = publish.main(command)
print("<<next command>>", file=sys.stderr)
status["verify tampered"] = verify.main(["--model", repo, "--no-progress"])
print("<<next command>>", file=sys.stderr)
status["verify"] = verify.main(["--model", repo, "--no-progress"])
images = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
local = FaceEmbedder.from_checkpoint(checkpoint)
status["embeddings equal"] = bool(torch.equal(FaceEmbedder.from_pretrained(repo).embed(images), local.embed(images)))
print(json.dumps(status))
"""


def test_the_commands_fail_with_a_message_then_finish_and_refuse_a_tampered_download(checkpoint, tmp_path):
    out = tmp_path / "export"
    with HubServer(lfs_patterns=["*.safetensors"]) as hub:
        hub.fail("commit", status=500)
        hub.tamper("model.safetensors", flip_first_byte, times=1)
        arguments = (str(checkpoint), "org/model", str(out))
        status, stderr = run_script_against_hub(_COMMANDS, *arguments, hub_url=hub.url, hf_home=tmp_path / "hf_home")
        assert status == {"publish": 1, "publish again": 0, "verify tampered": 3, "verify": 0, "embeddings equal": True}
        failed_publish, _, tampered_verify, _ = stderr.split("<<next command>>")
        assert "lightning-margin publish: Uploading" in failed_publish
        assert f"not uploaded: {', '.join(EXPORT)}." in failed_publish
        weights = sha256((out / "model.safetensors").read_bytes())
        assert (
            f"lightning-margin verify: org/model@{hub_commit(hub)}: downloaded content does not match"
            in tampered_verify
        )
        assert f"model.safetensors: sha256 expected {weights}, received " in tampered_verify
        published = hub.files("org/model")
        assert {name: sha256(published[name]) for name in EXPORT} == folder_hashes(out)
