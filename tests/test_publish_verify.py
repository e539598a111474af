"""publish -> download -> verify end to end with the real ``huggingface_hub`` client against a local Hub server.

The client reads ``HF_ENDPOINT`` when ``huggingface_hub`` is first imported, which pytest's process has done long
before these tests (Lightning imports it). Two ways to point it at the test server:

- in this process, pass ``endpoint=`` explicitly (``HfApi(endpoint=...)``, ``hf_hub_download(..., endpoint=...)``):
  used to test the server's routes;
- the commands (``publish``, ``verify``) and ``FaceEmbedder.from_pretrained`` take no endpoint argument, exactly like
  a user's session: they run in one subprocess whose environment sets ``HF_ENDPOINT`` before anything is imported.
  Patching ``huggingface_hub.constants.ENDPOINT`` here instead would be fragile: the value is copied into URL
  templates and default arguments at import time.

Nothing talks to huggingface.co: the subprocess's endpoint is the local server, and its cache is a temporary folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

from lightning_margin.model_card import parse_model_card
from tests.hub_server import HubServer, git_blob_sha1, run_script_against_hub
from tests.test_embedder import make_checkpoint


@pytest.fixture
def hub():
    with HubServer() as server:
        yield server


def test_server_speaks_the_hub_protocol_to_the_real_client(hub, tmp_path):
    api = HfApi(endpoint=hub.url, token="hf_test")
    assert api.create_repo("org/model").endswith("/org/model")
    api.create_repo("org/model", exist_ok=True)  # 409 from the server, accepted by exist_ok
    folder = tmp_path / "upload"
    (folder / "sub").mkdir(parents=True)
    (folder / "README.md").write_text("---\nlibrary_name: lightning-margin\n---\n# A model\n")
    (folder / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 10)
    commit = api.upload_folder(repo_id="org/model", folder_path=folder, commit_message="upload")
    info = api.model_info("org/model")
    assert info.sha == commit.oid
    assert sorted(sibling.rfilename for sibling in info.siblings) == [".gitattributes", "README.md", "sub/weights.bin"]
    tree = {entry.path: entry for entry in api.list_repo_tree("org/model", recursive=True)}
    assert tree["sub/weights.bin"].size == 2560
    assert tree["sub/weights.bin"].blob_id == git_blob_sha1(bytes(range(256)) * 10)
    path = hf_hub_download("org/model", "sub/weights.bin", endpoint=hub.url, cache_dir=tmp_path / "cache")
    assert Path(path).read_bytes() == bytes(range(256)) * 10
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("org/model", "missing.txt", endpoint=hub.url, cache_dir=tmp_path / "cache")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/absent")
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):
        api.upload_file(path_or_fileobj=b"---\n[not: a mapping\n---\n", path_in_repo="README.md", repo_id="org/model")
    # Files go inline in the commit (preupload says "regular"): no LFS or Xet endpoint is ever called.
    assert {path.split("/")[-2] for method, path in hub.requests if "/api/models/" in path and method == "POST"} == {
        "preupload",
        "commit",
    }


# Runs in a fresh interpreter with HF_ENDPOINT pointing at the test server; prints one JSON line of results.
_END_TO_END = r"""
import json, sys
import torch
from huggingface_hub import ModelCard
from lightning_margin import publish, verify
from lightning_margin.embedder import FaceEmbedder

checkpoint, repo, json_path = sys.argv[1:4]
status = {"publish": publish.main([checkpoint, "--repo-id", repo, "--no-progress"])}
status["verify"] = verify.main(["--model", repo, "--json", json_path, "--no-progress"])
downloaded = FaceEmbedder.from_pretrained(repo)
local = FaceEmbedder.from_checkpoint(checkpoint)
images = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
status["embeddings_equal"] = bool(torch.equal(downloaded.embed(images), local.embed(images)))
# Someone pushes a card whose accuracy is 0.05 better than the model's: verify must fail.
card = ModelCard.load(repo)
for result in card.data.eval_results:
    if result.metric_type == "accuracy":
        result.metric_value = round(result.metric_value + 0.05, 6)
card.push_to_hub(repo, commit_message="better numbers")
status["verify_tampered"] = verify.main(["--model", repo, "--no-progress"])
print(json.dumps(status))
"""


def test_publish_download_verify_and_a_tampered_card_fails(hub, tmp_path):
    checkpoint = make_checkpoint(tmp_path, steps=8)
    json_path = tmp_path / "verify.json"
    arguments = (str(checkpoint), "org/tiny-cosface", str(json_path))
    status, stderr = run_script_against_hub(_END_TO_END, *arguments, hub_url=hub.url, hf_home=tmp_path / "hf_home")
    assert status == {"publish": 0, "verify": 0, "embeddings_equal": True, "verify_tampered": 1}
    assert "accuracy card" in stderr and "FAILED: 1 metric(s)" in stderr

    files = hub.files("org/tiny-cosface")
    assert {"config.json", "model.safetensors", "README.md", "metrics.json"} <= set(files)
    assert hub.commit_messages("org/tiny-cosface")[-1] == "better numbers"
    # The first published card holds exactly what publish measured (metrics.json) and verify re-measured.
    first_card = hub.files("org/tiny-cosface", hub._repo("org/tiny-cosface").commits[1].oid)["README.md"]
    card = parse_model_card(first_card.decode())["synthetic"]
    assert card.source == "synthetic:40" and card.flip and card.num_pairs == 40
    published = json.loads(files["metrics.json"])["synthetic"]
    verified = json.loads(json_path.read_text())["org/tiny-cosface"]
    for metric, value in card.metrics.items():
        assert value == pytest.approx(published[metric], abs=1e-6)
        assert verified[metric] == published[metric]
