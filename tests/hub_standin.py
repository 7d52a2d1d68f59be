"""A stand-in for the Hugging Face Hub HTTP API, for tests.

The real ``huggingface_hub`` client talks to it when given ``endpoint=standin.endpoint``. It keeps
repositories in memory as git-like commits with branches and tags, answers the routes that model
pushes, label journals and Space deployment use, records every request, and simulates outages
(:meth:`HubStandin.fail_next`, :attr:`HubStandin.down`, :meth:`HubStandin.refuse_connections`).

Uploads: ``preupload`` answers ``"regular"`` for every file, so the client sends each file's content
inline (base64) in the commit call; the LFS and Xet upload paths are never taken.

Access rules, like the Hub: a valid ``Authorization: Bearer`` token maps to a user name; writes need
the token of the repo's namespace owner; private repos answer 401 (no token) or 404 (other user).
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import re
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

_TYPE = r"(?P<type>model|dataset|space)s"
_ID = r"(?P<id>[^/]+/[^/]+)"
_REV = r"(?P<rev>[^/]+)"
ROUTES = [  # (methods, path regex, handler name); matched in order against the raw (still quoted) path
    ("POST", r"/api/repos/create", "create_repo"),
    ("GET", r"/api/whoami-v2", "whoami"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("GET", rf"/api/{_TYPE}/{_ID}(?:/revision/{_REV})?", "repo_info"),
    ("GET", rf"/api/{_TYPE}/{_ID}/tree/{_REV}(?:/(?P<path>.+))?", "tree"),
    ("GET", rf"/api/{_TYPE}/{_ID}/refs", "refs"),
    ("GET", rf"/api/{_TYPE}/{_ID}/commits/{_REV}", "commits"),
    ("POST", rf"/api/{_TYPE}/{_ID}/preupload/{_REV}", "preupload"),
    ("POST", rf"/api/{_TYPE}/{_ID}/commit/{_REV}", "commit"),
    ("POST DELETE", rf"/api/{_TYPE}/{_ID}/tag/{_REV}", "tag"),
    ("GET POST DELETE", rf"/api/spaces/{_ID}/(?P<kind>secrets|variables)", "space_settings"),
    ("POST", rf"/api/spaces/{_ID}/hardware", "space_hardware"),
    ("GET", rf"/api/spaces/{_ID}/runtime", "space_runtime"),
    ("GET HEAD", rf"/(?:(?P<type>dataset|space)s/)?{_ID}/resolve/{_REV}/(?P<path>.+)", "resolve"),
]


GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
"""What a new repo's first commit holds, as on the Hub."""


def git_blob_oid(content: bytes) -> str:
    """The git blob id of ``content`` (what the client compares to skip unchanged files)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _refs(names: dict[str, str], kind: str) -> list[dict]:
    return [{"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": oid} for name, oid in names.items()]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


class HttpError(Exception):
    """An error answer: status, message (``X-Error-Message``) and optional ``X-Error-Code``."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None, **body):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.body = {"error": message, **body}


@dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, bytes]
    message: str


@dataclass
class Repo:
    """One repository: commits by id, branch and tag names to commit ids, Space settings."""

    repo_type: str
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    sdk: str | None = None
    secrets: dict[str, str] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)
    hardware: str | None = None

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0]

    def resolve(self, rev: str) -> Commit | None:
        """The commit a branch, tag or full commit id names, or None."""
        oid = self.branches.get(rev) or self.tags.get(rev) or (rev if rev in self.commits else None)
        return self.commits.get(oid) if oid else None

    def files(self, rev: str = "main") -> dict[str, bytes]:
        """Path → content at ``rev`` (a copy; for test assertions)."""
        commit = self.resolve(rev)
        return dict(commit.files) if commit else {}

    def log(self, branch: str = "main") -> list[str]:
        """Commit messages on ``branch``, newest first."""
        messages, commit = [], self.resolve(branch)
        while commit:
            messages.append(commit.message)
            commit = self.commits.get(commit.parent) if commit.parent else None
        return messages

    def add_commit(self, branch: str, files: dict[str, bytes], message: str) -> Commit:
        parent = self.branches.get(branch)
        digest = hashlib.sha1(f"{parent}|{message}|{len(self.commits)}".encode())
        for path in sorted(files):
            digest.update(f"{path}:{git_blob_oid(files[path])}".encode())
        commit = Commit(digest.hexdigest(), parent, files, message)
        self.commits[commit.oid] = commit
        self.branches[branch] = commit.oid
        return commit


@dataclass
class RecordedRequest:
    method: str
    path: str
    """URL path with percent-escapes decoded."""
    query: dict[str, list[str]]
    authorized: bool
    """True when a valid token came with the request."""
    user: str | None
    status: int = 0
    json: object = None
    """Parsed JSON body (secret values included: tests only)."""


class HubStandin:
    """The stand-in server; a context manager. ``tokens`` maps token values to user names."""

    def __init__(self, tokens: dict[str, str] | None = None):
        self.tokens = dict(tokens or {})
        self.repos: dict[str, Repo] = {}
        """Keyed by ``"<type>s/<owner>/<name>"``, e.g. ``"models/alice/cats"``."""
        self.requests: list[RecordedRequest] = []
        self.down = False
        """When True every request answers 503."""
        self.closed = False
        """Set by :meth:`close`: the test is over, every request answers 503."""
        self._failures: list[list] = []
        self.lock = threading.RLock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.standin = self
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="hub-standin",
                                        daemon=True)
        self._thread.start()

    def __enter__(self) -> "HubStandin":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """End of a test: every later request answers 503.

        The socket stays open on purpose. Code under test may leave threads retrying after the test;
        if they got 'connection refused', ``huggingface_hub``'s retry helper would close the client's
        shared connection pool (``close_session``) under the next test's requests.
        """
        with self.lock:
            self.closed = True

    def refuse_connections(self) -> None:
        """Simulate an unreachable Hub: stop listening and drop open connections ('connection refused')."""
        self.closed = True
        self._server.shutdown()
        self._server.server_close()
        self._server.drop_connections()

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo | None:
        return self.repos.get(f"{repo_type}s/{repo_id}")

    def fail_next(self, n: int, status: int = 503, path_contains: str | None = None) -> None:
        """Answer the next ``n`` requests (whose path contains ``path_contains``, if given) with ``status``."""
        with self.lock:
            self._failures.append([n, status, path_contains])

    def clear_failures(self) -> None:
        """Forget pending ``fail_next`` failures and end a ``down`` outage."""
        with self.lock:
            self._failures.clear()
            self.down = False

    def _injected_failure(self, path: str) -> int | None:
        with self.lock:
            if self.down or self.closed:
                return 503
            for failure in self._failures:
                if failure[0] > 0 and (failure[2] is None or failure[2] in path):
                    failure[0] -= 1
                    return failure[1]
        return None

    # --- access -------------------------------------------------------------------------------
    def _get_repo(self, req: dict, repo_type: str, repo_id: str, write: bool = False) -> Repo:
        repo, user = self.repo(repo_id, repo_type), req["user"]
        hidden = repo is None or (repo.private and user != repo.namespace)
        if hidden or (write and user is None):
            raise HttpError(401 if user is None else 404, "Repository not found", "RepoNotFound")
        if write and user != repo.namespace:
            raise HttpError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    @staticmethod
    def _commit_at(repo: Repo, rev: str) -> Commit:
        commit = repo.resolve(rev)
        if commit is None:
            raise HttpError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    def _url(self, repo: Repo) -> str:
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        return f"{self.endpoint}/{prefix}{repo.repo_id}"

    # --- routes ---------------------------------------------------------------------------------
    def create_repo(self, req: dict):
        if req["user"] is None:
            raise HttpError(401, "You must be authenticated to create a repo")
        body = req["json"]
        namespace = body.get("organization") or req["user"]
        if namespace != req["user"]:
            raise HttpError(403, f"You don't have the rights to create repos under {namespace}")
        repo_type, repo_id = body.get("type") or "model", f"{namespace}/{body['name']}"
        key = f"{repo_type}s/{repo_id}"
        if key in self.repos:
            raise HttpError(409, f"You already created this {repo_type} repo", url=self._url(self.repos[key]))
        private = body.get("visibility") == "private" or bool(body.get("private"))
        repo = Repo(repo_type, repo_id, private, sdk=body.get("sdk"), hardware=body.get("hardware"))
        repo.add_commit("main", {".gitattributes": GITATTRIBUTES}, "initial commit")
        self.repos[key] = repo
        return 200, {"url": self._url(repo), "name": repo_id, "id": repo_id}

    def whoami(self, req: dict):
        if req["user"] is None:
            raise HttpError(401, "Invalid credentials in Authorization header")
        return 200, {"type": "user", "name": req["user"], "orgs": [],
                     "auth": {"type": "access_token", "accessToken": {"displayName": "standin", "role": "write"}}}

    def validate_yaml(self, req: dict):
        text = req["json"].get("content", "")
        match = re.match(r"---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
        try:
            meta = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as exc:
            return 400, {"errors": [{"message": f"Invalid YAML: {exc}"}], "warnings": []}
        if meta is not None and not isinstance(meta, dict):
            return 400, {"errors": [{"message": "metadata must be a mapping"}], "warnings": []}
        return 200, {"errors": [], "warnings": []}

    def repo_info(self, req: dict):
        repo = self._get_repo(req, req["type"], req["id"])
        commit = self._commit_at(repo, req.get("rev") or "main")
        info = {"id": repo.repo_id, "author": repo.namespace, "sha": commit.oid, "private": repo.private,
                "lastModified": _now(), "tags": [], "disabled": False, "gated": False,
                "siblings": [{"rfilename": path} for path in sorted(commit.files)]}
        if repo.repo_type == "space":
            info["sdk"] = repo.sdk
        return 200, info

    def tree(self, req: dict):
        repo = self._get_repo(req, req["type"], req["id"])
        commit = self._commit_at(repo, req["rev"])
        base = (req.get("path") or "").strip("/")
        prefix = f"{base}/" if base else ""
        recursive = req["query"].get("recursive", ["false"])[0].lower() in ("1", "true")
        entries: dict[str, dict] = {}
        for path, content in sorted(commit.files.items()):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix):].split("/")
            depth = len(parts) if recursive else 1
            for i in range(1, min(depth, len(parts) - 1) + 1):  # folders on the way
                folder = prefix + "/".join(parts[:i])
                folder_oid = hashlib.sha1(folder.encode()).hexdigest()
                entries.setdefault(folder, {"type": "directory", "path": folder, "oid": folder_oid})
            if recursive or len(parts) == 1:
                entries[path] = {"type": "file", "path": path, "size": len(content), "oid": git_blob_oid(content)}
        if base and not entries:
            raise HttpError(404, f"{base} does not exist on {req['rev']}", "EntryNotFound")
        return 200, list(entries.values())

    def refs(self, req: dict):
        repo = self._get_repo(req, req["type"], req["id"])
        return 200, {"branches": _refs(repo.branches, "heads"), "tags": _refs(repo.tags, "tags"),
                     "converts": [], "pullRequests": []}

    def commits(self, req: dict):
        repo = self._get_repo(req, req["type"], req["id"])
        commit, out = self._commit_at(repo, req["rev"]), []
        while commit:
            out.append({"id": commit.oid, "title": commit.message, "message": "", "authors": [], "date": _now()})
            commit = repo.commits.get(commit.parent) if commit.parent else None
        return 200, out

    def preupload(self, req: dict):
        repo = self._get_repo(req, req["type"], req["id"], write=True)
        files = self._commit_at(repo, req["rev"]).files
        answer = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                   "oid": git_blob_oid(files[f["path"]]) if f["path"] in files else None}
                  for f in req["json"]["files"]]
        return 200, {"files": answer}

    def commit(self, req: dict):
        repo = self._get_repo(req, req["type"], req["id"], write=True)
        branch = req["rev"]
        if branch not in repo.branches or req["query"].get("create_pr"):
            raise HttpError(400, f"Can only commit to an existing branch, not {branch!r}", "RevisionNotFound")
        files, header = dict(repo.resolve(branch).files), {}
        for line in req["body"].splitlines():
            item = json.loads(line) if line.strip() else None
            key, value = (item["key"], item["value"]) if item else (None, None)
            if key == "header":
                header = value
            elif key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HttpError(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                files = {p: c for p, c in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
            elif key is not None:
                raise HttpError(422, f"The stand-in does not support {key!r} operations")
        parent = header.get("parentCommit")
        if parent and not repo.branches[branch].startswith(parent):
            raise HttpError(412, "A commit has happened since the parent commit")
        commit = repo.add_commit(branch, files, header.get("summary", ""))
        return 200, {"commitUrl": f"{self._url(repo)}/commit/{commit.oid}", "commitOid": commit.oid,
                     "success": True, "pullRequestUrl": None}

    def tag(self, req: dict):
        repo = self._get_repo(req, req["type"], req["id"], write=True)
        if req["method"] == "DELETE":
            if repo.tags.pop(req["rev"], None) is None:
                raise HttpError(404, f"Tag {req['rev']} not found", "RevisionNotFound")
            return 200, {}
        commit, name = self._commit_at(repo, req["rev"]), req["json"]["tag"]
        if name in repo.tags or name in repo.branches:
            raise HttpError(409, f"Tag {name} already exists")
        repo.tags[name] = commit.oid
        return 200, {}

    def space_settings(self, req: dict):
        repo = self._get_repo(req, "space", req["id"], write=True)
        store = repo.secrets if req["kind"] == "secrets" else repo.variables
        if req["method"] == "POST":
            store[req["json"]["key"]] = req["json"]["value"]
        elif req["method"] == "DELETE":
            store.pop(req["json"]["key"], None)
        if req["kind"] == "secrets":
            return 200, {key: {"description": None, "updatedAt": _now()} for key in store}
        return 200, {key: {"value": value, "description": None, "updatedAt": _now()} for key, value in store.items()}

    def space_hardware(self, req: dict):
        repo = self._get_repo(req, "space", req["id"], write=True)
        repo.hardware = req["json"]["flavor"]
        return self.space_runtime(req)

    def space_runtime(self, req: dict):
        repo = self._get_repo(req, "space", req["id"])
        return 200, {"stage": "BUILDING", "hardware": {"current": None, "requested": repo.hardware or "cpu-basic"}}

    def resolve(self, req: dict):
        repo = self._get_repo(req, req.get("type") or "model", req["id"])
        commit = self._commit_at(repo, req["rev"])
        content = commit.files.get(req["path"])
        headers = {"X-Repo-Commit": commit.oid}
        if content is None:
            raise HttpError(404, "Entry not found", "EntryNotFound", headers)
        headers.update({"ETag": f'"{git_blob_oid(content)}"', "Accept-Ranges": "bytes"})
        status, start = 200, 0
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", req["headers"].get("Range", ""))
        if ranged:
            start = int(ranged.group(1))
            end = int(ranged.group(2)) if ranged.group(2) else len(content) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            content, status = content[start:end + 1], 206
        return status, content, headers

    # --- dispatch -------------------------------------------------------------------------------
    def handle(self, method: str, raw_path: str, headers, body: bytes) -> tuple[int, bytes, dict]:
        """Route one request; returns (status, body, headers) and records it."""
        url = urlsplit(raw_path)
        token = (headers.get("Authorization") or "").removeprefix("Bearer ").strip() or None
        user = self.tokens.get(token) if token else None
        try:
            parsed = json.loads(body) if body and "json" in (headers.get("Content-Type") or "") else None
        except ValueError:
            parsed = None
        record = RecordedRequest(method, unquote(url.path), parse_qs(url.query), user is not None, user, json=parsed)
        with self.lock:
            self.requests.append(record)
            try:
                status, payload, extra = self._route(method, url, headers, body, token, user, parsed)
            except HttpError as err:
                status, payload, extra = err.status, err.body, {"X-Error-Message": err.message, **err.headers}
                if err.code:
                    extra["X-Error-Code"] = err.code
            record.status = status
        if not isinstance(payload, bytes):
            payload = json.dumps(payload).encode()
            extra.setdefault("Content-Type", "application/json")
        return status, payload, extra

    def _route(self, method, url, headers, body, token, user, parsed):
        failure = self._injected_failure(url.path)
        if failure:
            raise HttpError(failure, "Service Unavailable (simulated)")
        if token and user is None:
            raise HttpError(401, "Invalid credentials in Authorization header")
        for methods, pattern, name in ROUTES:
            match = re.fullmatch(pattern, url.path)
            if match and method in methods.split():
                req = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                req.update(method=method, query=parse_qs(url.query), headers=headers, user=user,
                           body=body.decode("utf-8", "replace"), json=parsed if parsed is not None else {})
                result = getattr(self, name)(req)
                return result if len(result) == 3 else (*result, {})
        raise HttpError(404, f"The stand-in has no route for {method} {url.path}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    standin: HubStandin

    def __init__(self, *args, **kwargs):
        self._open: set[socket.socket] = set()
        super().__init__(*args, **kwargs)

    def get_request(self):
        sock, addr = super().get_request()
        self._open.add(sock)
        return sock, addr

    def shutdown_request(self, request) -> None:
        self._open.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Close kept-alive client connections so a stand-in that refuses connections really looks down."""
        for sock in list(self._open):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._open.discard(sock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _serve(self) -> None:
        status, payload, headers = self.server.standin.handle(self.command, self.path, self.headers, self._body())
        try:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve


def isolate_hub_client(monkeypatch, tmp_path) -> None:
    """Keep the real client's cache, token file, telemetry and connections to this test.

    ``huggingface_hub`` reads these settings at import time, so the environment alone is not
    enough: the module constants are patched as well. Our code passes ``endpoint=`` explicitly.
    """
    import huggingface_hub.constants as constants
    from huggingface_hub.utils import close_session, disable_progress_bars

    # A fresh shared HTTP client per test: no connection kept alive from an earlier test is reused.
    close_session()

    home = tmp_path / "hf_home"
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    disable_progress_bars()


def logged_text(caplog) -> str:
    """Every record pytest captured so far in this test (setup and call phases), formatted with tracebacks."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(formatter.format(r) for phase in ("setup", "call") for r in caplog.get_records(phase))


@contextmanager
def running_standin(monkeypatch, tmp_path, caplog, tokens: dict[str, str], secrets=(), level: int = logging.INFO):
    """A :class:`HubStandin` that accepts ``tokens`` (token → user), with the real client isolated and logs
    captured at ``level`` (INFO by default); afterwards, none of ``secrets`` may appear in what was logged."""
    isolate_hub_client(monkeypatch, tmp_path)
    caplog.set_level(level)
    with HubStandin(tokens=tokens) as standin:
        yield standin
    logs = logged_text(caplog)
    assert not [secret for secret in secrets if secret in logs], "a secret reached the logs"
