"""A tiny in-memory stand-in for the Hugging Face Hub, for testing uploads offline.

It speaks only the HTTP endpoints that huggingface_hub (2.4) uses for `create_repo`,
`create_branch` and `upload_folder` on the legacy (non-Xet) path, so clients must run with
`HF_HUB_DISABLE_XET=1` and `HF_ENDPOINT=<server.url>` set before huggingface_hub is imported
(it reads both at import time; run the client in a subprocess).

Covered (read from huggingface_hub/hf_api.py, _commit_api.py and lfs.py):

    GET  /api/agent-harnesses                        -> 404 (huggingface_hub's best-effort
                                                        user-agent lookup; it ignores errors)
    POST /api/repos/create                           -> {"url"}; 409 if the repo exists
    POST /api/validate-yaml                          -> minimal check of the card's front matter
    POST /api/models/{repo}/branch/{branch}          -> create a branch from main; 409 if it exists
    POST /api/models/{repo}/preupload/{revision}     -> "lfs" for weight-like or >10 MiB files
    POST /{repo}.git/info/lfs/objects/batch          -> basic-transfer upload + verify actions
    PUT  /_lfs/{oid}                                 -> stores the object, checks its sha256
    POST /_lfs/verify                                -> checks that the object is stored
    POST /api/models/{repo}/commit/{revision}        -> applies an ndjson commit to the branch

Not covered, by design: downloads, listing, pull requests, deletions of folders, Xet storage,
authentication (the Authorization header is recorded, never checked), datasets and spaces,
and the real Hub's YAML schema (`validate-yaml` here only parses the YAML and checks the
license fields, which is far less than the Hub does).

The state lives in `HubServer.repos` so that a test can compare uploaded bytes directly.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml

# Same idea as the Hub's default .gitattributes: these go through LFS whatever their size.
LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".ckpt", ".npy", ".onnx")
LFS_MIN_SIZE = 10 * 1024 * 1024


@dataclass
class Repo:
    private: bool
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    commits: list[dict] = field(default_factory=list)  # {"branch", "oid", "summary", "paths"}


@dataclass
class HubState:
    repos: dict[str, Repo] = field(default_factory=dict)
    lfs: dict[str, bytes] = field(default_factory=dict)  # sha256 hex -> bytes
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    auth_headers: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _HubError(Exception):
    def __init__(self, status: int, message: str, error_code: str | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.error_code, self.extra = status, message, error_code, extra


_REPO = r"(?P<repo>[^/]+/[^/]+|[^/]+)"
_ROUTES = [
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/branch/(?P<rev>[^/]+)$"), "create_branch"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/{_REPO}\.git/info/lfs/objects/batch$"), "lfs_batch"),
    ("PUT", re.compile(r"^/_lfs/(?P<oid>[0-9a-f]{64})$"), "lfs_put"),
    ("POST", re.compile(r"^/_lfs/verify$"), "lfs_verify"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response carries Content-Length
    server: _Server

    def log_message(self, format, *args):  # noqa: A002 - keep pytest output quiet
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, payload: dict, error_code: str | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if error_code:
            self.send_header("X-Error-Code", error_code)
        if status >= 400:
            self.send_header("X-Error-Message", payload.get("error", ""))
        self.end_headers()
        self.wfile.write(body)

    def _dispatch(self, method: str) -> None:
        path = unquote(urlsplit(self.path).path)
        body = self._read_body()
        state = self.server.state
        with state.lock:
            state.requests.append((method, path))
            if "Authorization" in self.headers:
                state.auth_headers.add(self.headers["Authorization"])
        for route_method, pattern, name in _ROUTES:
            match = pattern.match(path)
            if route_method == method and match:
                try:
                    status, payload = getattr(self, "_" + name)(body, **match.groupdict())
                except _HubError as err:
                    self._send(err.status, {"error": err.message, **err.extra}, err.error_code)
                else:
                    self._send(status, payload)
                return
        self._send(404, {"error": f"fake hub: no route for {method} {path}"})

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    # --- endpoints -------------------------------------------------------------------------

    def _repo(self, repo_id: str) -> Repo:
        repo = self.server.state.repos.get(repo_id)
        if repo is None:
            raise _HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _create_repo(self, body: bytes):
        payload = json.loads(body)
        if payload.get("type", "model") != "model":
            raise _HubError(400, "fake hub: only model repos are supported")
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        state = self.server.state
        with state.lock:
            if repo_id in state.repos:
                # create_repo(exist_ok=True) reads "url" from the 409 body, as the Hub sends it
                raise _HubError(409, "You already created this model repo", url=f"{self.server.url}/{repo_id}")
            state.repos[repo_id] = Repo(private=payload.get("visibility") == "private")
        return 200, {"url": f"{self.server.url}/{repo_id}", "name": repo_id}

    def _validate_yaml(self, body: bytes):
        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---\n", content, re.S)
        if not match:
            return 200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]}
        try:
            meta = yaml.safe_load(match.group(1)) or {}
        except yaml.YAMLError as err:
            return 400, {"errors": [{"message": f"invalid YAML: {err}"}], "warnings": []}
        errors = []
        if meta.get("license") == "other" and not meta.get("license_name"):
            errors.append({"message": '"license_name" is required when "license" is "other"'})
        if meta.get("license_name") and not re.fullmatch(r"[a-z0-9.\-]+", str(meta["license_name"])):
            errors.append({"message": '"license_name" must be lowercase letters, digits, "-" or "."'})
        return (400 if errors else 200), {"errors": errors, "warnings": []}

    def _create_branch(self, body: bytes, repo: str, rev: str):
        state = self.server.state
        with state.lock:
            target = self._repo(repo)
            if rev in target.branches:
                raise _HubError(409, f"Reference {rev} already exists")
            start = (json.loads(body) if body else {}).get("startingPoint") or "main"
            target.branches[rev] = dict(target.branches[start])
        return 200, {}

    def _preupload(self, body: bytes, repo: str, rev: str):
        target = self._repo(repo)
        if rev not in target.branches:
            raise _HubError(404, f"Revision {rev} not found", "RevisionNotFound")
        files = []
        for item in json.loads(body)["files"]:
            lfs = item["path"].endswith(LFS_SUFFIXES) or item["size"] >= LFS_MIN_SIZE
            files.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False})
        return 200, {"files": files}

    def _lfs_batch(self, body: bytes, repo: str):
        self._repo(repo)
        payload = json.loads(body)
        if payload.get("operation") != "upload":
            raise _HubError(400, "fake hub: only LFS uploads are supported")
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.server.state.lfs:
                entry["actions"] = {
                    "upload": {"href": f"{self.server.url}/_lfs/{obj['oid']}"},
                    "verify": {"href": f"{self.server.url}/_lfs/verify"},
                }
            objects.append(entry)
        return 200, {"transfer": "basic", "objects": objects}

    def _lfs_put(self, body: bytes, oid: str):
        if hashlib.sha256(body).hexdigest() != oid:
            raise _HubError(400, f"fake hub: uploaded bytes do not hash to {oid}")
        with self.server.state.lock:
            self.server.state.lfs[oid] = body
        return 200, {}

    def _lfs_verify(self, body: bytes):
        payload = json.loads(body)
        stored = self.server.state.lfs.get(payload["oid"])
        if stored is None or len(stored) != payload["size"]:
            raise _HubError(404, f"fake hub: LFS object {payload['oid']} missing or wrong size")
        return 200, {}

    def _commit(self, body: bytes, repo: str, rev: str):
        state = self.server.state
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _HubError(400, "fake hub: commit payload must start with a header line")
        with state.lock:
            target = self._repo(repo)
            if rev not in target.branches:
                raise _HubError(404, f"Revision {rev} not found", "RevisionNotFound")
            tree = dict(target.branches[rev])
            paths = []
            for line in lines[1:]:
                key, value = line["key"], line["value"]
                if key == "file":
                    if value.get("encoding") != "base64":
                        raise _HubError(400, "fake hub: only base64 file content is supported")
                    tree[value["path"]] = base64.b64decode(value["content"])
                elif key == "lfsFile":
                    data = state.lfs.get(value["oid"])
                    if data is None:
                        raise _HubError(400, f"fake hub: LFS object for {value['path']} was never uploaded")
                    tree[value["path"]] = data
                elif key == "deletedFile":
                    if tree.pop(value["path"], None) is None:
                        raise _HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                else:
                    raise _HubError(400, f"fake hub: unsupported commit operation {key!r}")
                paths.append(value["path"])
            oid = hashlib.sha1(body + str(len(target.commits)).encode()).hexdigest()
            target.branches[rev] = tree
            target.commits.append({"branch": rev, "oid": oid, "summary": lines[0]["value"]["summary"], "paths": paths})
        return 200, {"commitUrl": f"{self.server.url}/{repo}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: HubState
    url: str


class HubServer:
    """Context manager: `with HubServer() as hub: ... hub.url ... hub.repos`."""

    def __init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)  # port 0: the OS picks a free one
        self._server.state = HubState()
        self._server.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def state(self) -> HubState:
        return self._server.state

    @property
    def repos(self) -> dict[str, Repo]:
        return self._server.state.repos

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


if __name__ == "__main__":  # manual use: python tests/hub_server.py, then point HF_ENDPOINT at it
    with HubServer() as hub:
        print(f"fake hub listening on {hub.url} (Ctrl-C to stop)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
