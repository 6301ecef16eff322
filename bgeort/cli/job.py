"""A resumable corpus job's output: parts and a journal beside the output, assembled at the end.

While a job runs, `<output>.partial/` holds `part-NNNNNN.npz` files (one per chunk of input rows) and
`journal.json` (the job's fingerprint, the parts, how many input rows they cover). A part is written,
fsynced and renamed into place before the journal names it, and the journal is replaced by rename, so
after a kill -9 at any moment the journal describes only parts that are whole. The same command reads
it, skips the input rows already covered and goes on. At the end the parts are streamed, one at a time,
into `<output>.tmp`, which is renamed onto the output: an output file only ever exists complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..errors import BgeortError
from . import formats

JOURNAL = "journal.json"


class JobError(BgeortError):
    """The output cannot be written, or belongs to another job."""


def describe_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            lines += describe_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            lines.append(f"{prefix}{key}: {json.dumps(a)[:120]} before, {json.dumps(b)[:120]} now")
    return lines


class PartialOutput:
    def __init__(self, output: str, fingerprint: dict, *, overwrite: bool):
        self.output = Path(output)
        self.folder = self.output.with_name(self.output.name + ".partial")
        self.fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back from the journal
        self.state = {"fingerprint": self.fingerprint, "rows_read": 0, "parts": [], "totals": {}}
        self.resumed = False
        self._open(overwrite)
        self._lock()

    def _lock(self) -> None:
        """One job at a time on a partial output (the lock goes with the process, kill -9 included)."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        self._lock_file = open(self.folder / "lock", "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise JobError(f"another bgeort process is writing {self.output} (it holds {self.folder / 'lock'}); "
                           "wait for it, or stop it and run the command again") from None

    def _open(self, overwrite: bool) -> None:
        journal = self.folder / JOURNAL
        if self.folder.exists() and overwrite:
            shutil.rmtree(self.folder)
        if journal.is_file():
            state = json.loads(journal.read_text(encoding="utf-8"))
            if state.get("fingerprint") != self.fingerprint:
                differences = describe_differences(state.get("fingerprint") or {}, self.fingerprint)
                raise JobError(
                    f"{self.folder} holds a partial output of a different job, so it cannot be resumed by this "
                    "one:\n  " + "\n  ".join(differences) +
                    f"\nRun the command it was started with to finish it, or add --overwrite to start this job "
                    f"afresh (the {state.get('rows_read', 0)} rows done so far are discarded)")
            self.state, self.resumed = state, True
            return
        if self.output.exists() and not overwrite:
            raise JobError(f"{self.output} exists and is not a partial output of this job; it is left as it is. "
                           "Add --overwrite to replace it, or choose another -o")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._write_journal()
        except OSError as exc:
            raise JobError(f"cannot write {self.folder}: {exc.strerror or exc}") from None

    @property
    def rows_read(self) -> int:
        return self.state["rows_read"]

    def commit(self, columns: dict, *, rows_read: int, rejected: list[dict], totals: dict) -> None:
        """Make one chunk durable: its part file, then the journal that names it."""
        name = f"part-{len(self.state['parts']):06d}.npz"
        part = self.folder / name
        arrays = {key: value for key, value in columns.items() if isinstance(value, np.ndarray)}
        extras = {key: value for key, value in columns.items() if not isinstance(value, np.ndarray)}
        payload = json.dumps({"lists": extras, "rejected": rejected}, ensure_ascii=False,
                             default=str).encode("utf-8", "surrogateescape")
        try:
            with open(part.with_suffix(".tmp"), "wb") as stream:
                np.savez(stream, json=np.frombuffer(payload, dtype=np.uint8), **arrays)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(part.with_suffix(".tmp"), part)
            self.state["parts"].append({"file": name, "rows": len(next(iter(columns.values()))),
                                        "rejected": len(rejected)})
            self.state["rows_read"] = rows_read
            self.state["totals"] = totals
            self._write_journal()
        except OSError as exc:
            self.state["parts"] = [p for p in self.state["parts"] if p["file"] != name]
            raise JobError(f"cannot write {part}: {exc.strerror or exc}. Everything before this chunk is saved: "
                           "free space (or fix the permission) and run the same command again to continue") from None

    def _write_journal(self) -> None:
        tmp = self.folder / (JOURNAL + ".tmp")
        with open(tmp, "w", encoding="utf-8") as stream:
            json.dump(self.state, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, self.folder / JOURNAL)
        _fsync_dir(self.folder)

    def parts(self):
        """(columns, rejected rows) of each part, in order, one in memory at a time."""
        for entry in self.state["parts"]:
            with np.load(self.folder / entry["file"]) as part:
                meta = json.loads(part["json"].tobytes().decode("utf-8", "surrogateescape"))
                columns = {key: part[key] for key in part.files if key != "json"}
            columns.update(meta["lists"])
            yield columns, meta["rejected"]

    def assemble(self, *, order: list[str], matrix: str | None, width: int, dtype: np.dtype,
                 empty: dict) -> Path | None:
        """Stream the parts into the output (and rejected rows beside it); remove the partial folder.
        Returns the rejected-rows file when there were any."""
        fmt = formats.output_format(str(self.output))
        tmp = self.output.with_name(self.output.name + ".tmp")
        rows = sum(part["rows"] for part in self.state["parts"])
        options = dict(matrix=matrix, width=width, dtype=dtype)
        if fmt == ".npy":
            options["rows"] = rows
        rejected_path = self.output.with_name(self.output.name + ".rejected.jsonl")
        rejected_tmp = rejected_path.with_name(rejected_path.name + ".tmp")
        any_rejected = any(part["rejected"] for part in self.state["parts"])
        try:
            writer = formats.WRITERS[fmt](tmp, **options)
            rejects = open(rejected_tmp, "w", encoding="utf-8", errors="surrogateescape") if any_rejected else None
            wrote = False
            for columns, rejected in self.parts():
                if len(next(iter(columns.values()))):
                    writer.write({key: columns[key] for key in order})
                    wrote = True
                if rejects is not None:
                    rejects.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rejected)
            if not wrote:
                writer.write(empty)
            writer.close()
            if rejects is not None:
                rejects.flush()
                os.fsync(rejects.fileno())
                rejects.close()
            if fmt == ".npy":
                os.replace(formats.sidecar_path(tmp), formats.sidecar_path(self.output))
            if any_rejected:
                os.replace(rejected_tmp, rejected_path)
            elif rejected_path.exists():
                rejected_path.unlink()  # an older run's, of a job now finished without rejections
            os.replace(tmp, self.output)
            _fsync_dir(self.output.parent)
        except OSError as exc:
            raise JobError(f"cannot write {tmp}: {exc.strerror or exc}. The finished parts are kept in "
                           f"{self.folder}: free space (or fix the permission) and run the same command again") from None
        shutil.rmtree(self.folder)
        return rejected_path if any_rejected else None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
