"""A Hub-compatible HTTP server for tests: the routes ``huggingface_hub``'s client uses to publish and download models.

Standard library only (``http.server`` in daemon threads), bound to 127.0.0.1 on free ports, everything in memory.
It implements what ``HfApi.create_repo``, ``upload_folder``/``create_commit``, ``ModelCard.push_to_hub``,
``model_info``, ``list_repo_tree``, ``verify_repo_checksums`` and ``hf_hub_download`` call:

- ``POST /api/repos/create`` (409 when the repo exists, which ``exist_ok=True`` accepts),
- ``POST /api/validate-yaml`` (the card's YAML front matter must parse to a mapping),
- ``POST /api/models/{id}/preupload/{rev}`` answers ``uploadMode: regular`` (contents inline, base64, in the commit)
  for every file, or ``lfs`` for the paths matching ``lfs_patterns``,
- ``POST /{id}.git/info/lfs/objects/batch`` (the git-lfs batch API, "basic" transfer): objects already in storage get
  no upload action, the others an ``href`` on the storage host,
- ``POST /api/models/{id}/commit/{rev}`` (NDJSON: a header line, then ``file`` / ``lfsFile`` / ``deletedFile`` lines;
  an ``lfsFile`` whose object is not in storage is refused, as on the Hub),
- ``GET /api/models/{id}`` and ``/api/models/{id}/revision/{rev}`` (model info with ``sha`` and ``siblings``; with
  ``?blobs=true`` each sibling has ``size``, ``blobId`` and, for LFS files, ``lfs.sha256``),
- ``GET /api/models/{id}/tree/{rev}[/{path}]`` (LFS files carry ``lfs: {oid, size, pointerSize}``),
- ``HEAD``/``GET /{id}/resolve/{rev}/{path}`` with the headers the client checks: ``X-Repo-Commit``, ``ETag`` (the
  git blob sha1 of a regular file), ``Content-Length``; for an LFS file a 302 to the storage host with
  ``X-Linked-Etag`` (the content's sha256) and ``X-Linked-Size``, like the Hub's redirect to its CDN. Errors carry
  ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) so the client raises its typed
  exceptions.

The storage host (a second port, ``storage_url``) stands for the Hub's CDN and S3: ``PUT /upload/{sha256}`` receives
an LFS object (refused unless the body hashes to the oid), ``GET /objects/{sha256}`` serves one. Being another origin,
the client sends it no token and takes a file's metadata from the Hub's redirect, not from the storage host.

Faults, for tests of what the client and our code do when the Hub misbehaves:

- :meth:`HubServer.fail`: the next requests of a route answer an HTTP error (e.g. the commit, the preupload, the N-th
  LFS upload answers 500),
- :meth:`HubServer.tamper`: downloads of a file serve other bytes while the metadata still announce the original
  file (its hash, and its size unless ``announce_served_size``).

Example:
    >>> with HubServer(lfs_patterns=["*.safetensors"]) as server:
    ...     server.fail("commit", status=500)
    ...     server.url.startswith("http://127.0.0.1:")
    True
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import subprocess
import sys
import threading
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

from tests.helpers import ROOT, subprocess_env

__all__ = ["ROUTES", "HubServer", "Route", "git_blob_sha1", "lfs_pointer"]

#: The routes :meth:`HubServer.fail` can break ("lfs-upload" and "lfs-download" are on the storage host).
Route = Literal[
    "create",
    "validate-yaml",
    "preupload",
    "lfs-batch",
    "lfs-upload",
    "commit",
    "info",
    "tree",
    "resolve",
    "lfs-download",
]
ROUTES: tuple[str, ...] = typing.get_args(Route)


def git_blob_sha1(content: bytes) -> str:
    """The git object id of a file's content (what the Hub reports as a regular file's oid and ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(content: bytes) -> bytes:
    """The git-lfs pointer file that git stores in place of an LFS file (its blob id is the file's ``blobId``)."""
    oid = hashlib.sha256(content).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(content)}\n".encode()


@dataclass
class _Commit:
    oid: str
    message: str
    files: dict[str, bytes]
    lfs: frozenset[str] = frozenset()  # the paths stored through LFS

    def blob_id(self, path: str) -> str:
        data = self.files[path]
        return git_blob_sha1(lfs_pointer(data) if path in self.lfs else data)


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


@dataclass
class _Fault:
    route: str
    status: int
    times: int | None  # None: every request
    skip: int


@dataclass
class _Tamper:
    path: str
    transform: Callable[[bytes], bytes]
    announce_served_size: bool
    times: int | None


class HubServer:
    """The in-memory Hub; use as a context manager (``with HubServer() as server: ... server.url``).

    Args:
        lfs_patterns: ``fnmatch`` patterns of the paths the preupload answers ``lfs`` for (the Hub decides from the
            repository's ``.gitattributes``, where ``*.safetensors`` is LFS). Default: none, every file is regular.
            The server speaks the legacy git-lfs protocol, not Xet: clients need ``HF_HUB_DISABLE_XET=1`` (or
            ``huggingface_hub.constants.HF_HUB_DISABLE_XET = True``) for LFS uploads.

    Attributes:
        url: ``http://127.0.0.1:PORT``: the value for ``HF_ENDPOINT``.
        storage_url: The storage host (LFS uploads and downloads).
        requests: ``(method, path)`` of every request served, on both hosts, for assertions.
        request_hook: Called with ``(method, path)`` before each request is served (e.g. to snapshot a folder at the
            first network call).
    """

    def __init__(self, *, lfs_patterns: Sequence[str] = ()) -> None:
        self.lfs_patterns = tuple(lfs_patterns)
        self._repos: dict[str, _Repo] = {}
        self._objects: dict[str, bytes] = {}  # LFS storage, by sha256
        self._faults: list[_Fault] = []
        self._tampers: list[_Tamper] = []
        self._lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self.request_hook: Callable[[str, str], None] | None = None
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), type("_Hub", (_Handler,), {"hub": self}))
        self._storage = ThreadingHTTPServer(("127.0.0.1", 0), type("_Storage", (_StorageHandler,), {"hub": self}))
        self._threads: list[threading.Thread] = []
        for server in (self._server, self._storage):
            server.daemon_threads = True

    @property
    def url(self) -> str:
        return _server_url(self._server)

    @property
    def storage_url(self) -> str:
        return _server_url(self._storage)

    def start(self) -> HubServer:
        for name, server in (("hub-server", self._server), ("hub-storage", self._storage)):
            thread = threading.Thread(target=server.serve_forever, args=(0.05,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in (self._server, self._storage):
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # ---- fault injection ---------------------------------------------------------------------------------------

    def fail(self, route: Route, *, status: int = 500, times: int | None = 1, skip: int = 0) -> None:
        """Make requests of ``route`` answer HTTP ``status``: ``times`` of them (``None``: all) after ``skip`` more.

        ``fail("lfs-upload", skip=1)`` breaks the second LFS upload; ``fail("commit")`` the next commit. Note that
        ``huggingface_hub`` retries 5xx answers (1, 2, 4, 8, 8 s apart) of the preupload, the LFS batch and LFS
        uploads, and of the commit only in ``upload_folder``'s Xet pipeline (hf_xet installed and enabled).
        """
        if route not in ROUTES:
            raise ValueError(f"route must be one of {', '.join(ROUTES)}; got {route!r}")
        with self._lock:
            self._faults.append(_Fault(route, status, times, skip))

    def tamper(
        self,
        path: str,
        transform: Callable[[bytes], bytes],
        *,
        announce_served_size: bool = False,
        times: int | None = None,
    ) -> None:
        """Serve ``transform(content)`` for downloads of ``path`` (in any repository) instead of its content.

        The metadata still announce the original file: ``ETag`` (regular files) or ``X-Linked-Etag`` (LFS files),
        the tree and the model info; the size too, unless ``announce_served_size`` (a server that consistently
        serves a damaged copy). ``times``: how many downloads are affected (``None``: all).
        """
        with self._lock:
            self._tampers.append(_Tamper(path, transform, announce_served_size, times))

    # ---- direct access for tests -------------------------------------------------------------------------------

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The files of a repository at a revision (a copy)."""
        with self._lock:
            commit = self._repos[repo_id].at(revision)
            assert commit is not None, f"no revision {revision} in {repo_id}"
            return dict(commit.files)

    def lfs_files(self, repo_id: str, revision: str = "main") -> set[str]:
        """The paths of a repository stored through LFS at a revision."""
        with self._lock:
            commit = self._repos[repo_id].at(revision)
            assert commit is not None, f"no revision {revision} in {repo_id}"
            return set(commit.lfs)

    def commit_messages(self, repo_id: str) -> list[str]:
        with self._lock:
            return [commit.message for commit in self._repos[repo_id].commits]

    @property
    def lfs_objects(self) -> set[str]:
        """The sha256 of every object in LFS storage, committed or not."""
        with self._lock:
            return set(self._objects)

    # ---- state changes (called by the handlers) -----------------------------------------------------------------

    def _check_faults(self, route: str) -> None:
        with self._lock:
            for fault in self._faults:
                if fault.route != route or fault.times == 0:
                    continue
                if fault.skip > 0:
                    fault.skip -= 1
                    return
                if fault.times is not None:
                    fault.times -= 1
                raise _HubError(fault.status, f"injected fault: HTTP {fault.status} on {route}")

    def _served(self, path: str, data: bytes, consume: bool) -> tuple[bytes, bool]:
        """The bytes a download of ``path`` serves, and whether the size announced is theirs (not the original's)."""
        with self._lock:
            for tamper in self._tampers:
                if tamper.path == path and tamper.times != 0:
                    if consume and tamper.times is not None:
                        tamper.times -= 1
                    return tamper.transform(data), tamper.announce_served_size
        return data, False

    def _create(self, repo_id: str, private: bool) -> bool:
        with self._lock:
            if repo_id in self._repos:
                return False
            repo = _Repo(repo_id, private)
            # The Hub creates every repository with an initial commit holding a .gitattributes file.
            repo.commits.append(_Commit(_commit_oid(repo_id, 0, b""), "initial commit", {".gitattributes": b""}))
            self._repos[repo_id] = repo
            return True

    def _commit(
        self, repo_id: str, message: str, added: dict[str, bytes], lfs_added: dict[str, str], deleted: list[str]
    ) -> str:
        with self._lock:
            missing = sorted(oid for oid in lfs_added.values() if oid not in self._objects)
            if missing:
                raise _HubError(422, f"LFS objects not in storage (upload them first): {', '.join(missing)}")
            repo = self._repos[repo_id]
            files, lfs = dict(repo.head().files), set(repo.head().lfs)
            for path in deleted:
                for name in [name for name in files if name == path or name.startswith(path.rstrip("/") + "/")]:
                    del files[name]
                    lfs.discard(name)
            files.update(added)
            lfs -= set(added)
            files.update({path: self._objects[oid] for path, oid in lfs_added.items()})
            lfs |= set(lfs_added)
            digest = b"".join(path.encode() + git_blob_sha1(data).encode() for path, data in sorted(files.items()))
            oid = _commit_oid(repo_id, len(repo.commits), digest + message.encode())
            repo.commits.append(_Commit(oid, message, files, frozenset(lfs)))
            return oid

    def _store_object(self, oid: str, data: bytes) -> None:
        if hashlib.sha256(data).hexdigest() != oid:
            raise _HubError(400, f"the uploaded content does not hash to {oid}")
        with self._lock:
            self._objects[oid] = data

    def _object(self, oid: str) -> bytes | None:
        with self._lock:
            return self._objects.get(oid)

    def _repo(self, repo_id: str) -> _Repo | None:
        with self._lock:
            return self._repos.get(repo_id)

    def _is_lfs_path(self, path: str) -> bool:
        return any(fnmatch.fnmatch(path, pattern) for pattern in self.lfs_patterns)


def _server_url(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}"


def _commit_oid(repo_id: str, index: int, payload: bytes) -> str:
    return hashlib.sha1(f"{repo_id}\0{index}\0".encode() + payload).hexdigest()


class _HubError(Exception):
    def __init__(self, status: int, message: str, error_code: str | None = None, commit: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.error_code, self.commit = status, message, error_code, commit


class _BaseHandler(BaseHTTPRequestHandler):
    hub: HubServer
    query: dict[str, list[str]]
    protocol_version = "HTTP/1.1"  # keep-alive, as the client expects; every response sets Content-Length

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read `hub.requests` instead
        pass

    def _route(self, method: str, path: str, body: bytes) -> tuple[str, Callable[[], None]]:
        """The route name of a request (for faults) and the action answering it."""
        raise NotImplementedError

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        path, self.query = url.path, parse_qs(url.query)
        self.hub.requests.append((method, path))
        if self.hub.request_hook is not None:
            self.hub.request_hook(method, path)
        # Read the body before anything can fail, so that the connection stays usable for the next request.
        body = self._read_body() if method in ("POST", "PUT") else b""
        try:
            route, action = self._route(method, path, body)
            self.hub._check_faults(route)
            action()
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

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after each chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self, status: int, body: bytes, headers: dict[str, str], head: bool = False, length: int | None = None
    ) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None, head: bool = False) -> None:
        headers = {"Content-Type": "application/json", **(headers or {})}
        self._send(status, json.dumps(payload).encode(), headers, head=head)

    def _base_url(self) -> str:
        return _server_url(self.server)  # type: ignore[arg-type]


class _Handler(_BaseHandler):
    """The Hub itself: API, git-lfs batch endpoint and file resolution."""

    def _route(self, method: str, path: str, body: bytes) -> tuple[str, Callable[[], None]]:
        parts = [unquote(part) for part in path.strip("/").split("/")]
        if method == "POST" and parts == ["api", "repos", "create"]:
            return "create", lambda: self._create_repo(json.loads(body or b"{}"))
        if method == "POST" and parts == ["api", "validate-yaml"]:
            return "validate-yaml", lambda: self._validate_yaml(json.loads(body or b"{}"))
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id = "/".join(parts[2:4])
            rest = parts[4:]
            if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
                return "preupload", lambda: self._preupload(repo_id, rest[1], json.loads(body or b"{}"))
            if method == "POST" and len(rest) == 2 and rest[0] == "commit":
                return "commit", lambda: self._commit(repo_id, rest[1], body)
            if method == "GET" and (not rest or (len(rest) == 2 and rest[0] == "revision")):
                return "info", lambda: self._model_info(repo_id, rest[1] if rest else "main")
            if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
                return "tree", lambda: self._tree(repo_id, rest[1], "/".join(rest[2:]))
        if method == "POST" and len(parts) == 6 and parts[1].endswith(".git") and parts[2:] == _LFS_BATCH:
            repo_id = f"{parts[0]}/{parts[1].removesuffix('.git')}"
            return "lfs-batch", lambda: self._lfs_batch(repo_id, json.loads(body or b"{}"))
        if method in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
            return "resolve", lambda: self._resolve(method, "/".join(parts[:2]), parts[3], "/".join(parts[4:]))
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
            path = entry["path"]
            lfs = self.hub._is_lfs_path(path) and entry.get("size", 1) > 0
            existing = commit.files.get(path)
            # Like the Hub, the oid of an existing file is the sha256 of its content when it is stored through LFS.
            if existing is None:
                oid = None
            elif path in commit.lfs:
                oid = hashlib.sha256(existing).hexdigest()
            else:
                oid = git_blob_sha1(existing)
            files.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        self._send_json(200, {"files": files, "commitOid": commit.oid})

    def _lfs_batch(self, repo_id: str, payload: dict[str, Any]) -> None:
        self._repo_at(repo_id, "main")
        if payload.get("operation") != "upload":
            raise _HubError(400, "the test Hub server's LFS batch endpoint only takes uploads")
        objects = []
        for item in payload.get("objects", []):
            answer = {"oid": item["oid"], "size": item["size"], "authenticated": True}
            if self.hub._object(item["oid"]) is None:
                # Objects already in storage get no action: the client skips them (deduplication by sha256).
                answer["actions"] = {"upload": {"href": f"{self.hub.storage_url}/upload/{item['oid']}"}}
            objects.append(answer)
        self._send_json(200, {"transfer": "basic", "objects": objects})

    def _commit(self, repo_id: str, revision: str, body: bytes) -> None:
        self._repo_at(repo_id, revision)
        if revision != "main":
            raise _HubError(400, "the test Hub server commits to main only")
        message, added, lfs_added, deleted = "", {}, {}, []
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
            elif key == "lfsFile":
                if value.get("algo", "sha256") != "sha256":
                    raise _HubError(400, f"unsupported LFS hash algorithm {value.get('algo')!r}")
                lfs_added[value["path"]] = value["oid"]
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
            else:
                raise _HubError(400, f"unsupported commit operation {key!r}")
        oid = self.hub._commit(repo_id, message, added, lfs_added, deleted)
        self._send_json(
            200, {"success": True, "commitOid": oid, "commitUrl": f"{self._base_url()}/{repo_id}/commit/{oid}"}
        )

    def _file_metadata(self, commit: _Commit, path: str) -> dict[str, Any]:
        data = commit.files[path]
        lfs = None
        if path in commit.lfs:
            lfs = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": len(lfs_pointer(data))}
        return {"size": len(data), "blobId": commit.blob_id(path), "lfs": lfs}

    def _model_info(self, repo_id: str, revision: str) -> None:
        repo, commit = self._repo_at(repo_id, revision)
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        blobs = self.query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = [
            {"rfilename": name, **(self._file_metadata(commit, name) if blobs else {})} for name in sorted(commit.files)
        ]
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
                "siblings": siblings,
            },
        )

    def _tree(self, repo_id: str, revision: str, folder: str) -> None:
        _, commit = self._repo_at(repo_id, revision)
        prefix = f"{folder.rstrip('/')}/" if folder else ""
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        entries, folders = [], set()
        for name in sorted(commit.files):
            if not name.startswith(prefix):
                continue
            parents = name[len(prefix) :].split("/")[:-1]
            if parents and not recursive:
                folders.add(prefix + parents[0])
                continue
            folders.update(prefix + "/".join(parents[: depth + 1]) for depth in range(len(parents)))
            metadata = self._file_metadata(commit, name)
            entry = {"type": "file", "oid": metadata["blobId"], "size": metadata["size"], "path": name}
            if metadata["lfs"] is not None:
                lfs = metadata["lfs"]
                entry["lfs"] = {"oid": lfs["sha256"], "size": lfs["size"], "pointerSize": lfs["pointerSize"]}
            entries.append(entry)
        entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": path} for path in sorted(folders)]
        self._send_json(200, entries)

    def _resolve(self, method: str, repo_id: str, revision: str, filename: str) -> None:
        _, commit = self._repo_at(repo_id, revision)
        data = commit.files.get(filename)
        if data is None:
            raise _HubError(404, f"Entry not found: {filename}", "EntryNotFound", commit=commit.oid)
        served, announce_served_size = self.hub._served(filename, data, consume=method == "GET")
        size = len(served) if announce_served_size else len(data)
        if filename in commit.lfs:
            # Like the Hub: a redirect to the storage host (its CDN) carrying the file's metadata.
            oid = hashlib.sha256(data).hexdigest()
            headers = {
                "Location": f"{self.hub.storage_url}/objects/{oid}?path={quote(filename)}",
                "ETag": f'"{commit.blob_id(filename)}"',
                "X-Linked-Etag": f'"{oid}"',
                "X-Linked-Size": str(size),
                "X-Repo-Commit": commit.oid,
            }
            return self._send(302, b"", headers, head=method == "HEAD")
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{git_blob_sha1(data)}"',
            "X-Repo-Commit": commit.oid,
            "Accept-Ranges": "bytes",
        }
        if method == "HEAD":
            return self._send(200, b"", headers, head=True, length=size)
        self._send(200, served, headers)


_LFS_BATCH = ["info", "lfs", "objects", "batch"]


class _StorageHandler(_BaseHandler):
    """The storage host: receives LFS uploads and serves LFS objects (the Hub's S3 and CDN)."""

    def _route(self, method: str, path: str, body: bytes) -> tuple[str, Callable[[], None]]:
        parts = [unquote(part) for part in path.strip("/").split("/")]
        if method == "PUT" and len(parts) == 2 and parts[0] == "upload":
            return "lfs-upload", lambda: self._upload(parts[1], body)
        if method in ("GET", "HEAD") and len(parts) == 2 and parts[0] == "objects":
            return "lfs-download", lambda: self._download(method, parts[1])
        raise _HubError(404, f"no route for {method} {path} on the test storage host")

    def _upload(self, oid: str, body: bytes) -> None:
        self.hub._store_object(oid, body)
        self._send(200, b"", {"ETag": f'"{hashlib.md5(body).hexdigest()}"'})

    def _download(self, method: str, oid: str) -> None:
        data = self.hub._object(oid)
        if data is None:
            raise _HubError(404, f"no LFS object {oid}")
        path = self.query.get("path", [""])[0]
        served, _ = self.hub._served(path, data, consume=method == "GET")
        self._send(200, served, {"Content-Type": "application/octet-stream"}, head=method == "HEAD")


def run_script_against_hub(script: str, *arguments: str, hub_url: str, hf_home: Path) -> tuple[dict[str, Any], str]:
    """Run ``python -c script *arguments`` in a fresh process whose huggingface_hub talks to ``hub_url`` only.

    A fresh process because huggingface_hub reads ``HF_ENDPOINT`` when it is imported. The script's last line of
    standard output is JSON (what it measured); returns it parsed, and the process's standard error.
    """
    environment = subprocess_env(
        HF_ENDPOINT=hub_url,
        HF_HOME=str(hf_home),
        HF_TOKEN="hf_test",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_XET="1",
        HF_HUB_OFFLINE="0",
    )
    process = subprocess.run(
        [sys.executable, "-c", script, *arguments],
        env=environment,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads(process.stdout.strip().splitlines()[-1]), process.stderr
