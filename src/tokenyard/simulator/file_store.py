"""The simulator's files, in memory: uploads, and the output and error files its batches write."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokenyard.errors import ObjectNotFound
from tokenyard.simulator.resources import IdMaker
from tokenyard.wire.openai import file_object

# OpenAI keeps batch inputs and outputs for 30 days by default and other files until deleted. The simulator
# reports that date but deletes nothing by itself.
EXPIRING_PURPOSES_TTL_S = {"batch": 30 * 86_400, "batch_output": 30 * 86_400}


@dataclass(frozen=True, slots=True)
class StoredFile:
    """One file: its metadata and its exact bytes."""

    id: str
    filename: str
    purpose: str
    created_at: int
    content: bytes

    def as_object(self) -> dict[str, Any]:
        """The file's ``file`` object."""
        ttl_s = EXPIRING_PURPOSES_TTL_S.get(self.purpose)
        expires_at = None if ttl_s is None else self.created_at + ttl_s
        return file_object(
            self.id, len(self.content), self.created_at, self.filename, self.purpose, expires_at
        )


class FileStore:
    """Files by id, in the order they were added."""

    __slots__ = ("_files", "_ids", "_seed")

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._files: dict[str, StoredFile] = {}
        self._ids = IdMaker(seed, "files")

    def add(self, filename: str, purpose: str, content: bytes, created_at: int) -> StoredFile:
        """Keep a new file and return it."""
        stored = StoredFile(self._ids.base62_id("file-"), filename, purpose, created_at, content)
        self._files[stored.id] = stored
        return stored

    def get(self, file_id: str) -> StoredFile:
        """The file with this id; raises ``ObjectNotFound`` if there is none."""
        return self.lookup(file_id, param="id")

    def lookup(self, file_id: str, *, param: str) -> StoredFile:
        """The file with this id; an unknown id is the client's error, blamed on ``param``."""
        stored = self._files.get(file_id)
        if stored is None:
            raise ObjectNotFound(f"No such File object: {file_id}", param=param)
        return stored

    def delete(self, file_id: str) -> None:
        """Forget a file; raises ``ObjectNotFound`` if there is none."""
        self.get(file_id)
        del self._files[file_id]

    def listing(self, purpose: str | None, *, newest_first: bool) -> list[StoredFile]:
        """Every file, or those with ``purpose``, by creation order."""
        files = [f for f in self._files.values() if purpose is None or f.purpose == purpose]
        return files[::-1] if newest_first else files

    def clear(self) -> None:
        """Forget every file and restart the ids, as in a fresh simulator."""
        self._files.clear()
        self._ids = IdMaker(self._seed, "files")
