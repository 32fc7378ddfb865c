r"""Writing results all at once: files go to a hidden staging folder next to
the output folder and are moved into place only when the whole run succeeds,
so that a failed or interrupted run leaves no partial results behind."""
import csv
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Mapping, Sequence

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


def unique_stems(paths: Sequence[Path]) -> List[str]:
    r"""A distinct file stem per path: ``cat``, ``cat-2``, ... for repeats."""
    stems: List[str] = []
    for path in paths:
        stem, count = path.stem, 1
        while stem in stems:
            count += 1
            stem = f"{path.stem}-{count}"
        stems.append(stem)
    return stems
