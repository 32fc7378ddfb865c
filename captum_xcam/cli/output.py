r"""Writing results all at once (``captum-xcam demo``): files go to a hidden
staging folder next to the output folder and are moved into place only when
the whole run succeeds, so that a failed or interrupted run leaves no partial
results behind; and the figure names of ``captum-xcam explain``, which writes
its results as it goes instead (:mod:`captum_xcam.cli.results`)."""
import csv
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Mapping, Sequence, Set

from captum_xcam.cli.errors import CliError


@contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    r"""
    Yields a fresh staging folder, ``.<out name>.partial-*`` beside ``out``.
    When the block ends normally its files move into ``out`` (created if
    needed; files of the same name are replaced); when it raises, nothing
    is moved. The staging folder is removed either way.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CliError(f"The output {out} exists and is not a folder.")
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.absolute().name}.partial-",
                                    dir=out.absolute().parent))
    try:
        yield staging
        out.mkdir(exist_ok=True)
        for path in sorted(staging.iterdir()):
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_csv(path: Path, rows: Sequence[Mapping[str, object]]) -> None:
    r"""Rows of the same keys as a CSV file with a header line."""
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_json(path: Path, content: object) -> None:
    path.write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def figure_stems(inputs: Sequence[Path], files: Sequence[Path]) -> List[str]:
    r"""
    A distinct figure name (without suffix) per image of ``files``, found in
    ``inputs`` (files, and folders searched recursively): its path inside the
    folder it was found in, subfolders joined by ``__`` (``sub/cat.jpg`` is
    ``sub__cat``), or a named file's stem; repeats made distinct by
    :func:`unique_stems`. The names depend on the whole list, so every process
    of a sharded run computes them from the same global list.
    """
    folders = [Path(path) for path in inputs if Path(path).is_dir()]
    return unique_stems([_inside(file, folders) for file in files])


def _inside(file: Path, folders: Sequence[Path]) -> Path:
    for folder in folders:
        if file.is_relative_to(folder):
            return file.relative_to(folder)
    return Path(file.name)


def unique_stems(paths: Sequence[Path]) -> List[str]:
    r"""A distinct name per path, its folders and stem joined by ``__``:
    ``cat``, ``cat-2``, ... for repeats, compared without case (figures of
    ``Cat.png`` and ``cat.png`` would be one file on macOS and Windows)."""
    stems: List[str] = []
    taken: Set[str] = set()
    for path in paths:
        base = "__".join(Path(path).with_suffix("").parts)
        stem, count = base, 1
        while stem.casefold() in taken:
            count += 1
            stem = f"{base}-{count}"
        stems.append(stem)
        taken.add(stem.casefold())
    return stems
