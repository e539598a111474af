"""A Hub-compatible HTTP server for tests: the routes ``huggingface_hub``'s client uses to publish and download models.

Standard library only (``http.server`` in a daemon thread), bound to 127.0.0.1 on a free port, everything in memory.
It implements what ``HfApi.create_repo``, ``upload_folder``/``create_commit``, ``ModelCard.push_to_hub``,
``model_info``, ``list_repo_tree`` and ``hf_hub_download`` call:

- ``POST /api/repos/create`` (409 when the repo exists, which ``exist_ok=True`` accepts),
- ``POST /api/validate-yaml`` (the card's YAML front matter must parse to a mapping),
- ``POST /api/models/{id}/preupload/{rev}`` answers ``uploadMode: regular`` for every file, so the client sends the
  contents inline (base64) in the commit: no LFS or Xet storage is needed, whether or not ``hf_xet`` is installed,
- ``POST /api/models/{id}/commit/{rev}`` (NDJSON: a header line, then ``file`` / ``deletedFile`` lines),
- ``GET /api/models/{id}`` and ``/api/models/{id}/revision/{rev}`` (model info with ``sha`` and ``siblings``),
- ``GET /api/models/{id}/tree/{rev}[/{path}]``,
- ``HEAD``/``GET /{id}/resolve/{rev}/{path}`` with the headers the client checks: ``X-Repo-Commit``, ``ETag`` (the
  git blob sha1 of the file), ``Content-Length``; errors carry ``X-Error-Code`` (``RepoNotFound``,
  ``RevisionNotFound``, ``EntryNotFound``) so the client raises its typed exceptions.

Example:
    >>> with HubServer() as server:
    ...     server.url.startswith("http://127.0.0.1:")
    True
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

__all__ = ["HubServer", "git_blob_sha1"]


def git_blob_sha1(content: bytes) -> str:
    """The git object id of a file's content (what the Hub reports as a regular file's oid and ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class _Commit:
    oid: str
    message: str
    files: dict[str, bytes]


@dataclass
class _Repo:
    repo_id: str
    private: bool
    commits: list[_Commit] = field(default_factory=list)

    def head(self) -> _Commit:
        return self.commits[-1]

    def at(self, revision: str) -> _Commit | None:
        if revision == "main":
            return self.head()
        return next((commit for commit in self.commits if commit.oid == revision), None)


class HubServer:
    """The in-memory Hub; use as a context manager (``with HubServer() as server: ... server.url``).

    Attributes:
        url: ``http://127.0.0.1:PORT``: the value for ``HF_ENDPOINT``.
        requests: ``(method, path)`` of every request served, for assertions.
    """

    def __init__(self) -> None:
        self._repos: dict[str, _Repo] = {}
        self._lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        handler = type("_BoundHandler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # ---- direct access for tests -------------------------------------------------------------------------------

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The files of a repository at a revision (a copy)."""
        with self._lock:
            commit = self._repos[repo_id].at(revision)
            assert commit is not None, f"no revision {revision} in {repo_id}"
            return dict(commit.files)

    def commit_messages(self, repo_id: str) -> list[str]:
        with self._lock:
            return [commit.message for commit in self._repos[repo_id].commits]

    # ---- state changes (called by the handler under the lock) ----------------------------------------------------

    def _create(self, repo_id: str, private: bool) -> bool:
        with self._lock:
            if repo_id in self._repos:
                return False
            repo = _Repo(repo_id, private)
            # The Hub creates every repository with an initial commit holding a .gitattributes file.
            repo.commits.append(_Commit(_commit_oid(repo_id, 0, b""), "initial commit", {".gitattributes": b""}))
            self._repos[repo_id] = repo
            return True

    def _commit(self, repo_id: str, message: str, added: dict[str, bytes], deleted: list[str]) -> str:
        with self._lock:
            repo = self._repos[repo_id]
            files = dict(repo.head().files)
            for path in deleted:
                for name in [name for name in files if name == path or name.startswith(path.rstrip("/") + "/")]:
                    del files[name]
            files.update(added)
            digest = b"".join(path.encode() + git_blob_sha1(data).encode() for path, data in sorted(files.items()))
            oid = _commit_oid(repo_id, len(repo.commits), digest + message.encode())
            repo.commits.append(_Commit(oid, message, files))
            return oid

    def _repo(self, repo_id: str) -> _Repo | None:
        with self._lock:
            return self._repos.get(repo_id)


def _commit_oid(repo_id: str, index: int, payload: bytes) -> str:
    return hashlib.sha1(f"{repo_id}\0{index}\0".encode() + payload).hexdigest()


class _HubError(Exception):
    def __init__(self, status: int, message: str, error_code: str | None = None, commit: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.error_code, self.commit = status, message, error_code, commit


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    query: dict[str, list[str]]
    protocol_version = "HTTP/1.1"  # keep-alive, as the client expects; every response sets Content-Length

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read `hub.requests` instead
        pass

    # ---- plumbing ---------------------------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        path, self.query = url.path, parse_qs(url.query)
        self.hub.requests.append((method, path))
        body = self._read_body() if method == "POST" else b""
        try:
            self._route(method, path, body)
        except _HubError as error:
            headers = {"X-Error-Message": error.message}
            if error.error_code:
                headers["X-Error-Code"] = error.error_code
            if error.commit:
                headers["X-Repo-Commit"] = error.commit
            self._send_json(error.status, {"error": error.message}, headers, head=method == "HEAD")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, headers: dict[str, str], head: bool = False) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None, head: bool = False) -> None:
        headers = {"Content-Type": "application/json", **(headers or {})}
        self._send(status, json.dumps(payload).encode(), headers, head=head)

    # ---- routes -----------------------------------------------------------------------------------------------

    def _route(self, method: str, path: str, body: bytes) -> None:
        parts = [unquote(part) for part in path.strip("/").split("/")]
        if method == "POST" and parts == ["api", "repos", "create"]:
            return self._create_repo(json.loads(body or b"{}"))
        if method == "POST" and parts == ["api", "validate-yaml"]:
            return self._validate_yaml(json.loads(body or b"{}"))
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id = "/".join(parts[2:4])
            rest = parts[4:]
            if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
                return self._preupload(repo_id, rest[1], json.loads(body or b"{}"))
            if method == "POST" and len(rest) == 2 and rest[0] == "commit":
                return self._commit(repo_id, rest[1], body)
            if method == "GET" and (not rest or (len(rest) == 2 and rest[0] == "revision")):
                return self._model_info(repo_id, rest[1] if rest else "main")
            if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
                return self._tree(repo_id, rest[1], "/".join(rest[2:]))
        if method in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(method, "/".join(parts[:2]), parts[3], "/".join(parts[4:]))
        raise _HubError(404, f"no route for {method} {path} in the test Hub server")

    def _repo_at(self, repo_id: str, revision: str) -> tuple[_Repo, _Commit]:
        repo = self.hub._repo(repo_id)
        if repo is None:
            raise _HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        commit = repo.at(revision)
        if commit is None:
            raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo, commit

    def _create_repo(self, payload: dict[str, Any]) -> None:
        if payload.get("type", "model") not in (None, "model"):
            raise _HubError(400, "the test Hub server stores model repositories only")
        name, organization = payload.get("name"), payload.get("organization")
        if not name or not organization:
            raise _HubError(400, "repositories need an organization: ORG/NAME")
        repo_id = f"{organization}/{name}"
        url = f"{self._base_url()}/{repo_id}"
        if not self.hub._create(repo_id, payload.get("visibility") == "private"):
            # Like the Hub: 409 with the existing repo's url, which create_repo(exist_ok=True) returns.
            message = "You already created this model repo"
            return self._send_json(409, {"error": message, "url": url}, {"X-Error-Message": message})
        self._send_json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self, payload: dict[str, Any]) -> None:
        content = str(payload.get("content", ""))
        errors = []
        if content.startswith("---"):
            end = content.find("\n---", 3)
            if end < 0:
                errors.append({"message": "the YAML front matter is not closed with ---"})
            else:
                try:
                    metadata = yaml.safe_load(content[3:end])
                except yaml.YAMLError as error:
                    errors.append({"message": f"invalid YAML: {error}"})
                else:
                    if metadata is not None and not isinstance(metadata, dict):
                        errors.append({"message": "the YAML front matter must be a mapping"})
        status = 400 if errors else 200
        self._send_json(status, {"errors": errors, "warnings": []})

    def _preupload(self, repo_id: str, revision: str, payload: dict[str, Any]) -> None:
        _, commit = self._repo_at(repo_id, revision)
        files = []
        for entry in payload.get("files", []):
            existing = commit.files.get(entry["path"])
            files.append(
                {
                    "path": entry["path"],
                    "uploadMode": "regular",  # contents inline in the commit: no LFS/Xet storage here
                    "shouldIgnore": False,
                    "oid": git_blob_sha1(existing) if existing is not None else None,
                }
            )
        self._send_json(200, {"files": files, "commitOid": commit.oid})

    def _commit(self, repo_id: str, revision: str, body: bytes) -> None:
        self._repo_at(repo_id, revision)
        if revision != "main":
            raise _HubError(400, "the test Hub server commits to main only")
        message, added, deleted = "", {}, []
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value", {})
            if key == "header":
                message = value.get("summary", "")
            elif key == "file":
                if value.get("encoding") != "base64":
                    raise _HubError(400, f"unsupported encoding {value.get('encoding')!r}")
                added[value["path"]] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
            else:
                raise _HubError(400, f"unsupported commit operation {key!r} (preupload asked for regular uploads)")
        oid = self.hub._commit(repo_id, message, added, deleted)
        self._send_json(
            200, {"success": True, "commitOid": oid, "commitUrl": f"{self._base_url()}/{repo_id}/commit/{oid}"}
        )

    def _model_info(self, repo_id: str, revision: str) -> None:
        repo, commit = self._repo_at(repo_id, revision)
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        self._send_json(
            200,
            {
                "_id": repo_id,
                "id": repo_id,
                "modelId": repo_id,
                "sha": commit.oid,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "library_name": "lightning-margin",
                "createdAt": now,
                "lastModified": now,
                "siblings": [{"rfilename": name} for name in sorted(commit.files)],
            },
        )

    def _tree(self, repo_id: str, revision: str, folder: str) -> None:
        _, commit = self._repo_at(repo_id, revision)
        prefix = f"{folder.rstrip('/')}/" if folder else ""
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        entries, folders = [], set()
        for name, data in sorted(commit.files.items()):
            if not name.startswith(prefix):
                continue
            parents = name[len(prefix) :].split("/")[:-1]
            if parents and not recursive:
                folders.add(prefix + parents[0])
                continue
            folders.update(prefix + "/".join(parents[: depth + 1]) for depth in range(len(parents)))
            entries.append({"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": name})
        entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": path} for path in sorted(folders)]
        self._send_json(200, entries)

    def _resolve(self, method: str, repo_id: str, revision: str, filename: str) -> None:
        _, commit = self._repo_at(repo_id, revision)
        data = commit.files.get(filename)
        if data is None:
            raise _HubError(404, f"Entry not found: {filename}", "EntryNotFound", commit=commit.oid)
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{git_blob_sha1(data)}"',
            "X-Repo-Commit": commit.oid,
            "Accept-Ranges": "bytes",
        }
        self._send(200, data, headers, head=method == "HEAD")

    def _base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"
