r"""The output folder of ``captum-xcam explain``, written as the run goes, so
that an interrupted run keeps what it did and a rerun resumes it.

The folder holds

* ``run.json``, the manifest: the run's config and its status (complete or
  not, and why not, with the counts and the images that could not be read).
  It is written, marked incomplete, before the first image, and again at the
  end; a run killed midway leaves it saying so.
* ``explanations.csv``: a header, then each image's rows, appended in one
  write and flushed to disk (``os.fsync``) per image, so that a kill loses at
  most the image in flight. An image counts as done when all its rows are
  there; a torn or short last image is dropped and redone.
* ``explanations.shard-R-of-N.csv``: under ``torchrun``, process R of N
  appends its rows here instead; process 0 merges the shards into
  ``explanations.csv`` at the end, or, after a kill, at the start of the next
  run.
* ``explanations.json``: the config, the status and every row, written at the
  end, row by row from the CSV (memory stays flat).

The merge (:meth:`ResultsFolder.merge`) puts the rows in the order of the
global list of images, whichever process or run explained them, so a run in
several processes, or in several tries, writes the same files as one run in
one process. It keeps, per image, where its rows are (not the rows): memory
in proportion to the number of images, as the list of files itself."""
import csv
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple

from captum_xcam.cli.errors import CliError

MANIFEST = "run.json"
TABLE = "explanations.csv"
REPORT = "explanations.json"
SHARDS = "explanations.shard-*-of-*.csv"
INTEGER_COLUMNS = ("target", "predicted")
FLOAT_COLUMNS = ("score", "seconds")
# Settings that may change between the runs that fill one output folder.
MAY_DIFFER = ("device",)
RUNNING = ("running, or stopped before the end (killed?); run the same command again "
           "to resume")


@dataclass
class Status:
    r"""Where a run stands: ``explained`` of its ``images`` (those with all
    their rows), the images that could not be read, and ``reason`` when it is
    not complete."""

    images: int
    explained: int
    failed: List[Dict[str, str]] = field(default_factory=list)
    reason: Optional[str] = None

    @property
    def complete(self) -> bool:
        return self.reason is None and not self.failed and self.explained == self.images

    def to_json(self) -> Dict[str, object]:
        return {"complete": self.complete, **asdict(self)}


@dataclass(frozen=True)
class Block:
    r"""The rows of one image in a CSV file: bytes ``start`` to ``end``."""

    image: str
    start: int
    end: int
    rows: int


class ResultsFolder:
    r"""
    The files of one output folder (see the module's docstring).

    Args:
        out (Path): The folder.
        columns (list of str): The CSV's columns; ``image`` names the image.
        rows_per_image (int): The rows of an image that is done.
    """

    def __init__(self, out: Path, columns: Sequence[str], rows_per_image: int) -> None:
        self.out = Path(out)
        self.columns = list(columns)
        self.rows_per_image = rows_per_image
        self.table = self.out / TABLE
        self.report = self.out / REPORT

    def check(self, config: Mapping[str, object]) -> None:
        r"""Raises CliError unless the folder is new, or holds results of a run
        with the same settings (``config``, but for :data:`MAY_DIFFER`).
        Reads only: every process checks."""
        if self.out.exists() and not self.out.is_dir():
            raise CliError(f"The output {self.out} exists and is not a folder.")
        manifest = self.manifest()
        if manifest is None:
            if self.table.exists() or list(self.out.glob(SHARDS)):
                raise CliError(f"{self.out} holds {TABLE} but no {MANIFEST} (results of "
                               "an older captum-xcam?); use another --out, or delete it "
                               "to start over.")
            return
        differences = [f"{key} {manifest['config'].get(key)!r} there, {value!r} here"
                       for key, value in config.items()
                       if key not in MAY_DIFFER and manifest["config"].get(key) != value]
        if differences:
            raise CliError(f"{self.out} holds results of other settings ("
                           f"{'; '.join(differences)}); use another --out, or delete "
                           f"{self.out} to start over.")
        if self.table.exists() and self._header(self.table) not in (None, self.columns):
            raise CliError(f"{self.table} has other columns than this captum-xcam writes; "
                           "use another --out, or delete it to start over.")

    def manifest(self) -> Optional[Dict[str, Any]]:
        path = self.out / MANIFEST
        if not path.exists():
            return None
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(manifest["config"], dict) and isinstance(manifest["status"], dict):
                return manifest
        except (ValueError, KeyError, TypeError):
            pass
        raise CliError(f"{path} is not a manifest of captum-xcam explain; use another "
                       f"--out, or delete {self.out} to start over.")

    def is_complete(self) -> bool:
        manifest = self.manifest()
        return manifest is not None and manifest["status"].get("complete") is True

    def start(self, config: Mapping[str, object], status: Status) -> None:
        r"""Marks the folder as being written: the manifest says incomplete,
        and the report of an earlier run, no longer true, goes."""
        self._write_manifest(config, status)
        self.report.unlink(missing_ok=True)

    def finish(self, config: Mapping[str, object], status: Status) -> None:
        r"""The report and the manifest, with ``status``; after :meth:`merge`."""
        temporary = self.out / f".{REPORT}.tmp"
        with open(temporary, "w", encoding="utf-8") as file:
            file.write('{"config": ' + json.dumps(dict(config), ensure_ascii=False) + ",\n")
            file.write(' "status": ' + json.dumps(status.to_json(), ensure_ascii=False)
                       + ',\n "explanations": [')
            for number, row in enumerate(self.rows()):
                file.write(",\n  " if number else "\n  ")
                file.write(json.dumps(row, ensure_ascii=False))
            file.write("\n ]}\n")
        _replace(temporary, self.report)
        self._write_manifest(config, status)

    def rows(self) -> Iterator[Dict[str, object]]:
        r"""The rows of ``explanations.csv``, one at a time, numbers as numbers."""
        with open(self.table, newline="", encoding="utf-8") as file:
            for row in csv.DictReader(file):
                yield {key: _typed(key, value) for key, value in row.items()}

    def merge(self, images: Sequence[str]) -> Set[str]:
        r"""
        Puts every done image's rows into ``explanations.csv``, in the order of
        ``images`` (those no longer listed follow, as they were), each image
        once (the first complete rows found, ``explanations.csv`` first), and
        removes the shard files; torn and short images are dropped. Rewrites
        the file only when that changes it. Returns the done images.

        Only process 0 merges, while no process writes.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        shards = sorted(self.out.glob(SHARDS))
        found: Dict[str, Tuple[Path, Block]] = {}
        clean = not shards
        for source in [self.table, *shards]:
            blocks, intact = self._blocks(source)
            clean = clean and intact
            for block in blocks:
                if block.rows == self.rows_per_image and block.image not in found:
                    found[block.image] = (source, block)
                else:
                    clean = False
        listed = [image for image in images if image in found]
        unlisted = found.keys() - set(listed)
        order = listed + [image for image in found if image in unlisted]
        if not (clean and order == list(found)):
            self._rewrite(order, found)
        for shard in shards:
            shard.unlink()
        return set(found)

    def done(self) -> Set[str]:
        r"""The images whose rows are all in ``explanations.csv``."""
        blocks, _ = self._blocks(self.table)
        return {block.image for block in blocks if block.rows == self.rows_per_image}

    def writer(self, rank: int, world: int) -> "RowWriter":
        r"""The file this process appends its rows to: ``explanations.csv``, or
        its shard under torchrun."""
        path = self.table if world == 1 else self.out / f"explanations.shard-{rank}-of-{world}.csv"
        return RowWriter(path, self.columns)

    def _rewrite(self, order: Sequence[str], found: Mapping[str, Tuple[Path, Block]]) -> None:
        temporary = self.out / f".{TABLE}.tmp"
        handles: Dict[Path, io.BufferedReader] = {}
        try:
            with open(temporary, "wb") as file:
                file.write(_csv_text([self.columns]).encode("utf-8"))
                for image in order:
                    source, block = found[image]
                    if source not in handles:
                        handles[source] = open(source, "rb")
                    handles[source].seek(block.start)
                    file.write(handles[source].read(block.end - block.start))
                file.flush()
                os.fsync(file.fileno())
        finally:
            for handle in handles.values():
                handle.close()
        _replace(temporary, self.table)

    def _blocks(self, path: Path) -> Tuple[List[Block], bool]:
        r"""The images' rows in a CSV file, in file order, and whether the file
        is intact: our header, whole lines, each image's rows together."""
        if not path.exists():
            return [], False
        blocks: List[Block] = []
        intact = self._header(path) == self.columns
        image_column = self.columns.index("image")
        with open(path, "rb") as file:
            header = file.readline()
            offset = len(header)
            for line in file:
                if not line.endswith(b"\n"):  # torn by a kill while writing
                    intact = False
                    break
                fields = next(csv.reader([line.decode("utf-8")]), [])
                if len(fields) != len(self.columns):  # not one of our rows: dropped
                    intact = False
                    offset += len(line)
                    continue
                image = fields[image_column]
                if blocks and blocks[-1].image == image and blocks[-1].end == offset:
                    last = blocks[-1]
                    blocks[-1] = Block(image, last.start, offset + len(line), last.rows + 1)
                else:
                    blocks.append(Block(image, offset, offset + len(line), 1))
                offset += len(line)
        return blocks, intact

    @staticmethod
    def _header(path: Path) -> Optional[List[str]]:
        with open(path, newline="", encoding="utf-8") as file:
            line = file.readline()
        return next(csv.reader([line])) if line.endswith("\n") else None

    def _write_manifest(self, config: Mapping[str, object], status: Status) -> None:
        temporary = self.out / f".{MANIFEST}.tmp"
        temporary.write_text(json.dumps({"config": dict(config), "status": status.to_json()},
                                        indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        _replace(temporary, self.out / MANIFEST)


class RowWriter:
    r"""Appends each image's rows to a CSV file in one write, on disk before
    :meth:`append` returns; writes the header into a new or empty file."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.columns = list(columns)
        self.file = open(path, "a", newline="", encoding="utf-8")
        if self.file.tell() == 0:
            self._write([self.columns])

    def append(self, rows: Sequence[Mapping[str, object]]) -> None:
        self._write([[row[column] for column in self.columns] for row in rows])

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "RowWriter":
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()

    def _write(self, lines: Sequence[Sequence[object]]) -> None:
        self.file.write(_csv_text(lines))
        self.file.flush()
        os.fsync(self.file.fileno())


def _csv_text(lines: Sequence[Sequence[object]]) -> str:
    text = io.StringIO()
    csv.writer(text).writerows(lines)
    return text.getvalue()


def _typed(key: str, value: str) -> object:
    if key in INTEGER_COLUMNS:
        return int(value)
    if key in FLOAT_COLUMNS:
        return float(value)
    return value


def _replace(source: Path, destination: Path) -> None:
    r"""``os.replace``, then the folder flushed to disk, so the new file is
    there after a crash (where the platform can: not on Windows)."""
    os.replace(source, destination)
    try:
        folder = os.open(destination.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(folder)
    except OSError:
        pass
    finally:
        os.close(folder)
