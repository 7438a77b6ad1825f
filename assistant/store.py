"""Where votes and Chat-tab feedback go: local JSONL files, pushed to a Hub dataset repo when one is set.

A Space's disk is wiped on every restart, so user data only lasts when it is pushed somewhere:
``huggingface_hub.CommitScheduler`` commits the folder to a dataset repo in the background every minute,
and once more at exit (``close``; ``app.py`` calls it on SIGTERM, which a Space restart sends). Each
record is written and flushed to the disk (``fsync``) before ``append`` returns, so a vote the user saw
accepted is on disk even if the process is killed the next instant; docs/space.md says what is lost where. Each run of the app writes files of its own
(``votes-<run>.jsonl``, ``feedback-<run>.jsonl``): a restarted app never uploads a fresh, shorter copy
over the last run's file, so nothing that was scheduled is lost. At start the earlier runs' votes are
read back from the repo, so the leaderboard goes on from where it was.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from assistant.votes import read_votes

log = logging.getLogger(__name__)


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:200]


class Store:
    """Appends records to this run's JSONL files in ``folder``; pushes them to ``repo_id`` if given."""

    def __init__(self, folder, repo_id: str | None = None, api=None, every: float = 1.0):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        run = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
        self.files = {kind: self.folder / f"{kind}-{run}.jsonl" for kind in ("votes", "feedback")}
        self.repo_id = repo_id
        self.scheduler = None
        self.problem: str | None = None  # why records stay on this server only, for the user
        self.earlier: Path | None = None  # the earlier runs' votes, downloaded from the repo
        self.on_vote: list[Callable[[], None]] = []  # called after each vote is stored (the leaderboard)
        self._lock = threading.Lock()
        if repo_id:
            self._connect(repo_id, api, every)

    def _connect(self, repo_id: str, api, every: float) -> None:
        from huggingface_hub import CommitScheduler, HfApi

        store = self

        class Scheduler(CommitScheduler):
            def push_to_hub(self):
                try:
                    info = super().push_to_hub()
                except Exception as error:
                    store.problem = store._unreachable(error)
                    raise
                store.problem = None
                return info

        api = api or HfApi()
        try:
            self.scheduler = Scheduler(
                repo_id=repo_id,
                repo_type="dataset",
                folder_path=self.folder,
                path_in_repo="data",
                every=every,
                private=True,
                allow_patterns=["*.jsonl"],
                hf_api=api,
            )
        except Exception as error:  # offline, unreachable, no rights: keep serving, keep data locally
            self.problem = self._unreachable(error)
            log.warning("%s", self.problem)
            return
        self._lock = self.scheduler.lock  # the scheduler reads the files under this lock
        try:
            self.earlier = Path(
                api.snapshot_download(
                    repo_id,
                    repo_type="dataset",
                    allow_patterns=["data/votes-*.jsonl"],
                    cache_dir=self.folder.parent / f".{self.folder.name}-hub-cache",  # not pushed again
                )
            )
        except Exception as error:
            log.info("no earlier votes read from %s: %s", repo_id, _first_line(error))

    def _unreachable(self, error: BaseException) -> str:
        return (
            f"Votes are kept on this server only for now: the feedback repo {self.repo_id} cannot be "
            f"reached ({_first_line(error)})."
        )

    @property
    def where(self) -> str:
        if self.scheduler is None:
            return "this server"
        return f"this server and the dataset repo {self.repo_id}"

    def append(self, kind: str, record: dict) -> None:
        """Append one JSON line and flush it to the disk. One ``write`` to a file opened for appending
        lands whole, so a crash or a concurrent record never leaves half a line."""
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        path = self.files[kind]
        with self._lock:
            new = not path.exists()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            if new:  # the file's name must reach the disk too, or a power cut loses the whole file
                folder = os.open(self.folder, os.O_RDONLY)
                try:
                    os.fsync(folder)
                finally:
                    os.close(folder)
        if kind == "votes":
            for listener in self.on_vote:
                listener()

    def votes(self) -> list[dict]:
        """Every vote this server holds: this run's, earlier local runs', and those read from the repo."""
        records = read_votes(self.folder)
        if self.earlier is not None:
            records += read_votes(self.earlier)
        unique = {}
        for record in records:
            unique.setdefault(record.get("id") or id(record), record)
        return list(unique.values())

    def push_now(self, timeout: float = 60) -> None:
        """Push what is written (at exit, and in tests); does nothing without a repo."""
        if self.scheduler is not None:
            self.scheduler.trigger().result(timeout)

    def close(self, timeout: float = 60) -> None:
        """Push what is left and stop the scheduler (a stopped app's last push; its atexit push is then
        a no-op). Failing to reach the repo is logged: the records stay on the disk."""
        if self.scheduler is None:
            return
        try:
            self.push_now(timeout)
        except Exception as error:
            log.warning("the last votes were not pushed to %s: %s", self.repo_id, _first_line(error))
        self.scheduler.stop()
