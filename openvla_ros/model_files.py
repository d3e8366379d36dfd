"""Model files on disk: one-line errors that name the damaged file, and size + SHA-256 records.

Models reach a robot by copying many gigabytes, and a truncated or corrupted copy is a real
event. Every problem found here becomes a `ModelFileError` whose message is one line: the file,
what is wrong with it, and what to do ("re-copy it", "re-export"). `MissingModelFile` is also a
`FileNotFoundError` and `InvalidModelFile` a `ValueError`, so callers that caught those still do.

`FileRecord` is what `openvla-ros export` and `convert-om` write into `manifest.json` for every
file they produce; `check_records` compares files against them: sizes always (a `stat`, instant),
SHA-256 only when asked (reading every byte: see the README for the cost).
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

HASH_CHUNK = 8 << 20
# Hashing files at least this large shows a progress bar (when the caller asks for one).
PROGRESS_MIN_BYTES = 64 << 20


class ModelFileError(Exception):
    """A model file that is missing, damaged or does not belong here; `str()` is one line."""

    def __init__(self, path: str | Path, problem: str, remedy: str) -> None:
        self.path, self.problem, self.remedy = Path(path), problem, remedy
        super().__init__(f"{path}: {problem}; {remedy}")

    def __str__(self) -> str:  # OSError's own __str__ would prepend errno fields
        return f"{self.path}: {self.problem}; {self.remedy}"


class MissingModelFile(ModelFileError, FileNotFoundError):
    """A file the model needs is not there."""


class InvalidModelFile(ModelFileError, ValueError):
    """A file is there but truncated, corrupted, of the wrong kind, or from another model."""


def raise_first(problems: list[ModelFileError], directory: str | Path) -> None:
    """Raise the first problem; its message says how many more there are and how to list them (one line still)."""
    if not problems:
        return
    first = problems[0]
    if len(problems) > 1:
        more = f" ({len(problems) - 1} more problem{'s' if len(problems) > 2 else ''}: " \
               f"`openvla-ros check {directory}` lists them all)"
        first = type(first)(first.path, first.problem, first.remedy + more)
    raise first


def read_json(path: Path, remedy: str) -> Any:
    """A JSON file's contents; a missing or unparsable file is a `ModelFileError` naming it."""
    if not path.is_file():
        raise MissingModelFile(path, "missing", remedy)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise InvalidModelFile(path, f"invalid JSON at line {exc.lineno} column {exc.colno} ({exc.msg})",
                               remedy) from exc
    except UnicodeDecodeError as exc:
        raise InvalidModelFile(path, f"not a JSON text file (invalid UTF-8 at byte {exc.start})", remedy) from exc


@dataclass(frozen=True)
class FileRecord:
    """The size and SHA-256 of one file, as the manifest records it."""

    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileRecord:
        size, digest = data["size"], data["sha256"]
        if not isinstance(size, int) or size < 0 or not isinstance(digest, str) or len(digest) != 64:
            raise ValueError(f"expected {{'size': bytes, 'sha256': 64 hex digits}}, got {data}")
        return cls(size=size, sha256=digest.lower())

    @classmethod
    def of(cls, path: Path, progress: bool = False) -> FileRecord:
        return cls(size=path.stat().st_size, sha256=sha256_file(path, progress=progress))


def sha256_file(path: Path, progress: bool = False, on_chunk: Callable[[int], None] | None = None) -> str:
    """Hex SHA-256 of a file, read in 8 MiB chunks; a tqdm bar on stderr for large files if `progress`."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    bar = None
    if progress and size >= PROGRESS_MIN_BYTES:
        from tqdm import tqdm

        bar = tqdm(total=size, unit="B", unit_scale=True, desc=f"sha256 {path.name}", file=sys.stderr, leave=False)
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
            if bar is not None:
                bar.update(len(chunk))
            if on_chunk is not None:
                on_chunk(len(chunk))
    if bar is not None:
        bar.close()
    return digest.hexdigest()


def record_files(directory: Path, names: Iterable[str], progress: bool = False) -> dict[str, FileRecord]:
    """Records of the named files in `directory`, sorted by name."""
    return {name: FileRecord.of(directory / name, progress=progress) for name in sorted(set(names))}


def size_problem(path: Path, expected: int, remedy: str) -> InvalidModelFile | None:
    """Compare a file's size with the expected one (a `stat`, no read)."""
    got = path.stat().st_size
    if got == expected:
        return None
    kind = "truncated" if got < expected else "too large"
    return InvalidModelFile(path, f"{kind}: expected {expected} bytes, got {got}", remedy)


def check_records(directory: Path, records: dict[str, FileRecord], names: Iterable[str], remedy: str,
                  verify_hashes: bool, progress: bool = False,
                  on_checked: Callable[[str], None] | None = None) -> list[ModelFileError]:
    """Problems of the named files against their records: missing, wrong size, (hash) mismatch.

    Names without a record are checked for presence only. `on_checked(name)` is called for every
    file found sound, so a caller can list them.
    """
    problems: list[ModelFileError] = []
    for name in names:
        path = directory / name
        if not path.is_file():
            problems.append(MissingModelFile(path, "missing", remedy))
            continue
        record = records.get(name)
        if record is None:
            if on_checked:
                on_checked(name)
            continue
        problem = size_problem(path, record.size, remedy)
        if problem is None and verify_hashes:
            got = sha256_file(path, progress=progress)
            if got != record.sha256:
                problem = InvalidModelFile(path, f"checksum mismatch: sha256 {got[:16]}..., the manifest records "
                                                 f"{record.sha256[:16]}... (same size: the content is corrupted)",
                                           remedy)
        if problem is None:
            if on_checked:
                on_checked(name)
        else:
            problems.append(problem)
    return problems
