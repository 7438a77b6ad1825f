"""A stand-in for the Hugging Face Hub's HTTP API, on loopback, for the real `huggingface_hub` client.

It speaks the part of the protocol that pushing a folder and downloading it back use (checked against
huggingface_hub 2.4: hf_api.py, _commit_api.py, _upload_pipeline.py, file_download.py):

  GET  /api/whoami-v2                                  who the bearer token belongs to
  POST /api/repos/create                               {"name", "organization", "visibility", "type"}
  POST /api/validate-yaml                              README.md front matter check
  POST /api/models/{repo}/preupload/{rev}              -> uploadMode "regular" for every file, so the
                                                          content travels base64 inside the commit (no
                                                          LFS batch API, no Xet storage needed)
  POST /api/models/{repo}/commit/{rev}                 NDJSON: header, file, deletedFile lines
  GET  /api/models/{repo}[/revision/{rev}]             info with sha, private and siblings
  GET  /api/models/{repo}/tree/{rev}[/{path}]          listing (recursive=1 walks sub-folders)
  HEAD/GET /{repo}/resolve/{rev}/{path}                file with X-Repo-Commit, ETag, Content-Length

Private repos answer 404 RepoNotFound to anyone but their owner, as the Hub does. Every request is
logged (method, path, Authorization header) so tests can check what the client sent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml


def git_blob_sha(content: bytes) -> str:
    """The git object id of a file: what the Hub calls a regular file's oid."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Repo:
    owner: str
    private: bool
    commits: list[dict] = field(default_factory=list)  # oldest first: {"sha", "summary", "files"}

    def snapshot(self, rev: str) -> dict | None:
        if not self.commits:
            return {"sha": "0" * 40, "files": {}} if rev == "main" else None
        if rev == "main":
            return self.commits[-1]
        return next((c for c in self.commits if c["sha"] == rev), None)


class HubStandIn:
    """``with HubStandIn(token=...) as hub:`` serves on ``hub.url`` until the block ends."""

    def __init__(self, token: str, user: str = "tester"):
        self.token, self.user = token, user
        self.repos: dict[str, Repo] = {}
        self.requests: list[dict] = []  # {"method", "path", "authorization"}
        self.unhandled: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> HubStandIn:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- state ------------------------------------------------------------------------------

    def add_repo(self, repo_id: str, folder: Path, private: bool = False) -> None:
        """Seed a repo with a folder's files (e.g. a base model that the adapter names)."""
        files = {
            p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
        }
        repo = self.repos.setdefault(repo_id, Repo(owner=repo_id.split("/")[0], private=private))
        self._commit(repo, "seed", files)

    def _commit(self, repo: Repo, summary: str, files: dict[str, bytes]) -> str:
        sha = hashlib.sha1(f"{len(repo.commits)} {summary} {time.time_ns()}".encode()).hexdigest()
        repo.commits.append({"sha": sha, "summary": summary, "files": files})
        return sha

    # -- HTTP -------------------------------------------------------------------------------

    def _handler_class(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest's output clean
                pass

            def do_GET(self):
                hub._dispatch(self, "GET")

            def do_HEAD(self):
                hub._dispatch(self, "HEAD")

            def do_POST(self):
                hub._dispatch(self, "POST")

        return Handler

    def _dispatch(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(h.path)
        path, query = unquote(parts.path), parse_qs(parts.query)
        auth = h.headers.get("Authorization")
        with self._lock:
            self.requests.append({"method": method, "path": path, "authorization": auth})
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        caller = self.user if auth == f"Bearer {self.token}" else None
        if auth and caller is None:
            return self._send(
                h,
                401,
                {"error": "Invalid credentials in Authorization header"},
                headers={"X-Error-Message": "Invalid credentials in Authorization header"},
            )
        try:
            with self._lock:
                return self._route(h, method, path, query, body, caller)
        except (ValueError, KeyError) as error:
            return self._send(h, 400, {"error": f"bad request: {error}"})

    def _route(self, h, method, path, query, body, caller):
        if path == "/api/whoami-v2" and method == "GET":
            if caller is None:
                return self._send(h, 401, {"error": "Unauthorized"})
            return self._send(
                h,
                200,
                {
                    "type": "user",
                    "name": caller,
                    "fullname": "Test User",
                    "orgs": [],
                    "auth": {
                        "type": "access_token",
                        "accessToken": {"displayName": "tests", "role": "write"},
                    },
                },
            )
        if path == "/api/repos/create" and method == "POST":
            return self._create_repo(h, json.loads(body), caller)
        if path == "/api/validate-yaml" and method == "POST":
            return self._validate_yaml(h, json.loads(body))
        if path.startswith("/api/models/"):
            return self._models_api(h, method, path[len("/api/models/") :], query, body, caller)
        if method in ("GET", "HEAD") and "/resolve/" in path:
            return self._resolve(h, method, path.lstrip("/"), caller)
        self.unhandled.append(f"{method} {path}")
        return self._send(h, 404, {"error": "not found"})

    def _create_repo(self, h, payload, caller):
        if caller is None:
            return self._send(h, 401, {"error": "You must be authenticated to create a repo"})
        namespace = payload.get("organization") or caller
        repo_id = f"{namespace}/{payload['name']}"
        if payload.get("type", "model") != "model":
            return self._send(h, 400, {"error": "this stand-in hosts model repos only"})
        if namespace != caller:
            return self._send(
                h,
                403,
                {"error": f"You don't have the rights to create a model under {namespace}"},
                headers={"X-Error-Message": "You don't have the rights"},
            )
        if repo_id in self.repos:
            return self._send(
                h, 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
            )
        self.repos[repo_id] = Repo(owner=caller, private=payload.get("visibility") == "private")
        return self._send(h, 200, {"url": f"{self.url}/{repo_id}", "name": repo_id})

    def _validate_yaml(self, h, payload):
        text = payload["content"]
        if text.startswith("---"):
            try:
                yaml.safe_load(text.split("---", 2)[1])
            except yaml.YAMLError as error:
                return self._send(h, 400, {"errors": [{"message": f"invalid YAML: {error}"}]})
        return self._send(h, 200, {"errors": [], "warnings": []})

    def _visible_repo(self, h, repo_id, caller) -> Repo | None:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and caller != repo.owner):
            self._send(h, 404, {"error": "Repository not found"}, headers={"X-Error-Code": "RepoNotFound"})
            return None
        return repo

    def _models_api(self, h, method, rest, query, body, caller):
        namespace, name, *tail = rest.split("/")
        repo_id = f"{namespace}/{name}"
        repo = self._visible_repo(h, repo_id, caller)
        if repo is None:
            return None
        action = tail[0] if tail else ""
        writes = action in ("preupload", "commit")
        if writes and caller != repo.owner:
            return self._send(
                h, 403, {"error": "no write access"}, headers={"X-Error-Message": "no write access"}
            )
        rev = tail[1] if len(tail) > 1 else "main"
        if action in ("", "revision", "tree", "commit", "preupload"):
            snapshot = repo.snapshot(rev)
            if snapshot is None:
                return self._send(
                    h, 404, {"error": "Invalid rev id"}, headers={"X-Error-Code": "RevisionNotFound"}
                )
        if method == "GET" and action in ("", "revision"):
            return self._send(
                h,
                200,
                {
                    "id": repo_id,
                    "modelId": repo_id,
                    "author": repo.owner,
                    "sha": snapshot["sha"],
                    "private": repo.private,
                    "tags": [],
                    "lastModified": "2025-01-01T00:00:00.000Z",
                    "siblings": [{"rfilename": p} for p in sorted(snapshot["files"])],
                },
            )
        if method == "GET" and action == "tree":
            return self._tree(h, snapshot, "/".join(tail[2:]), query.get("recursive", ["false"])[0])
        if method == "POST" and action == "preupload":
            files = json.loads(body)["files"]
            return self._send(
                h,
                200,
                {
                    "files": [
                        {
                            "path": f["path"],
                            "uploadMode": "regular",
                            "shouldIgnore": False,
                            "oid": git_blob_sha(snapshot["files"][f["path"]])
                            if f["path"] in snapshot["files"]
                            else None,
                        }
                        for f in files
                    ]
                },
            )
        if method == "POST" and action == "commit":
            return self._commit_ndjson(h, repo_id, repo, snapshot, body)
        self.unhandled.append(f"{method} /api/models/{rest}")
        return self._send(h, 404, {"error": "not found"})

    def _commit_ndjson(self, h, repo_id, repo, snapshot, body):
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            return self._send(h, 400, {"error": "the first line must be the commit header"})
        files = dict(snapshot["files"])
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file" and value.get("encoding") == "base64":
                files[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "deletedFile":
                files.pop(value["path"], None)
            else:  # lfsFile: never asked for, since preupload said "regular" for everything
                return self._send(h, 400, {"error": f"unsupported commit operation {line['key']}"})
        sha = self._commit(repo, lines[0]["value"]["summary"], files)
        return self._send(
            h, 200, {"success": True, "commitOid": sha, "commitUrl": f"{self.url}/{repo_id}/commit/{sha}"}
        )

    def _tree(self, h, snapshot, prefix, recursive):
        prefix = prefix.strip("/")
        entries, folders = [], set()
        for path, content in sorted(snapshot["files"].items()):
            if prefix and not path.startswith(prefix + "/"):
                continue
            rest = path[len(prefix) + 1 :] if prefix else path
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                folder = "/".join(([prefix] if prefix else []) + parts[:depth])
                if (recursive in ("1", "true", "True") or depth == 1) and folder not in folders:
                    folders.add(folder)
                    entries.append(
                        {
                            "type": "directory",
                            "oid": hashlib.sha1(folder.encode()).hexdigest(),
                            "size": 0,
                            "path": folder,
                        }
                    )
            if recursive in ("1", "true", "True") or len(parts) == 1:
                entries.append(
                    {"type": "file", "oid": git_blob_sha(content), "size": len(content), "path": path}
                )
        if prefix and not entries:
            return self._send(h, 404, {"error": "not found"}, headers={"X-Error-Code": "EntryNotFound"})
        return self._send(h, 200, entries)

    def _resolve(self, h, method, path, caller):
        head, _, file_path = path.partition("/resolve/")
        rev, _, file_path = file_path.partition("/")
        repo = self._visible_repo(h, head, caller)
        if repo is None:
            return None
        snapshot = repo.snapshot(rev)
        if snapshot is None:
            return self._send(
                h, 404, {"error": "Invalid rev id"}, headers={"X-Error-Code": "RevisionNotFound"}
            )
        if file_path not in snapshot["files"]:
            return self._send(
                h,
                404,
                {"error": "Entry not found"},
                headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": snapshot["sha"]},
            )
        content = snapshot["files"][file_path]
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(content)))
        h.send_header("ETag", f'"{git_blob_sha(content)}"')
        h.send_header("X-Repo-Commit", snapshot["sha"])
        h.end_headers()
        if method == "GET":
            h.wfile.write(content)
        return None

    @staticmethod
    def _send(h, status: int, payload, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)
