"""`banger preprocess`: filter, normalize and tokenize a MIDI collection into a data directory.

Files are read in worker processes and their results consumed in input order, so the
output is byte-identical whatever the number of workers. Everything is written to a
staging directory beside the output and renamed into place at the end: a killed run
leaves no half-written data set under the final name.
"""

from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing
import os
import shutil
import stat
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..errors import BangerError, DataError, MidiReadError, OutputExistsError, UsageError
from ..atomic_files import atomic_write, process_alive, writing
from ..midi.instruments import DRUMS, INSTRUMENTS
from ..midi.midifile import MAX_FILE_BYTES
from ..midi.score import Score
from .shards import DATA_FORMAT, DATA_FORMAT_VERSION, ShardWriter
from ..midi.tokenizer import Tokenizer, TokenizerConfig, lead_order

MIDI_SUFFIXES = (".mid", ".midi")


@dataclass(frozen=True)
class PreprocessOptions:
    val_fraction: float = 0.1  # share of files (by content hash) put in the validation split
    max_notes: int = 30_000  # longer files are skipped ("too many notes")
    max_minutes: float = 20.0  # longer files are skipped ("too long")
    min_notes: int = 8  # files with fewer notes are skipped ("empty" or "too few notes")
    require_instruments: bool = True  # skip files with no program change and no drums
    lead_margin: float = 0.0  # skip when the top two melodic parts differ by <= this share of notes
    keep_drums_only: bool = True  # keep files whose only notes are drums
    trim_silence: bool = True  # drop whole empty bars before the first note

    def validate(self) -> None:
        if not 0.0 <= self.val_fraction <= 1.0:
            raise UsageError(f"--val-fraction must be in [0, 1], got {self.val_fraction}")
        if self.max_notes < 1 or self.min_notes < 0 or self.max_minutes <= 0:
            raise UsageError("--max-notes and --max-minutes must be positive, --min-notes >= 0")
        if not 0.0 <= self.lead_margin < 1.0:
            raise UsageError(f"--lead-margin must be in [0, 1), got {self.lead_margin}")


@dataclass
class PreprocessReport:
    out: Path
    found: int = 0
    kept: dict = field(default_factory=lambda: {"train": 0, "validation": 0})
    skipped: Counter = field(default_factory=Counter)
    duplicates: int = 0
    notes: int = 0
    tokens: int = 0
    seconds: float = 0.0
    manifest: dict = field(default_factory=dict)


def find_midi_files(sources: list[str | os.PathLike]) -> list[Path]:
    """All .mid/.midi files under `sources` (case-insensitive), sorted; a named file is
    taken whatever its suffix. Names that are not regular files (a FIFO, a socket, a device
    called x.mid) are listed too: process_file skips them, unopened, and says why."""
    found: set[Path] = set()
    for source in map(Path, sources):
        if source.is_dir():
            for root, dirs, files in os.walk(source):
                dirs.sort()
                for name in files:
                    if name.lower().endswith(MIDI_SUFFIXES):
                        found.add(Path(root) / name)
        elif source.exists():
            found.add(source)
        else:
            raise UsageError(f"no such file or directory: {source}")
    return sorted(found, key=str)


def is_data_set(directory: Path) -> bool:
    """Whether `directory` holds a data set banger wrote (its manifest names banger's format):
    the only kind of folder `--force` may replace."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == DATA_FORMAT


def split_of(digest: str, val_fraction: float) -> str:
    """Validation when the content hash falls below the fraction: stable across runs and machines."""
    return "validation" if int(digest[:15], 16) / 16**15 < val_fraction else "train"


def process_file(path: Path, options: PreprocessOptions, config: TokenizerConfig) -> dict:
    """Read, filter and tokenize one file. Never raises for a bad file: returns a reason."""
    result: dict = {"path": str(path)}
    try:
        data = read_regular_file(path, MAX_FILE_BYTES)
    except _NotReadable as err:
        return {**result, "skip": f"unreadable: {err}"}
    except OSError as err:
        return {**result, "skip": f"unreadable: {err.strerror or err}"}
    result["sha256"] = hashlib.sha256(data).hexdigest()
    tokenizer = Tokenizer(config)
    try:
        score = tokenizer.read(data)
    except MidiReadError as err:
        return {**result, "skip": f"unreadable: {err}"}
    reason = filter_reason(score, options)
    if reason:
        return {**result, "skip": reason}
    if options.trim_silence and score.notes:
        bar = config.steps_per_bar
        shift = min(note.start for note in score.notes) // bar * bar
        if shift:  # most files start in their first bar: nothing to rebuild
            score.notes = [note._replace(start=note.start - shift) for note in score.notes]
    ids = tokenizer.encode(score)
    counts = score.note_counts()
    result.update(
        ids=ids,
        notes=len(score.notes),
        bpm=score.bpm,
        seconds=round(score.seconds, 3),
        instruments={INSTRUMENTS[i].name: n for i, n in sorted(counts.items())},
    )
    return result


class _NotReadable(Exception):
    """A name in the collection that is not a MIDI file to read (said in skipped.csv)."""


def read_regular_file(path: Path, limit: int) -> bytes:
    """The bytes of `path` if it is a regular file of at most `limit` bytes. Opened without
    blocking and checked on the open handle: a FIFO called x.mid is skipped, never waited on,
    and a stray 4 GB file is refused unread, so it cannot fill the memory."""
    handle = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(handle, "rb") as file:
        status = os.fstat(file.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise _NotReadable("not a regular file")
        if status.st_size > limit:
            raise _NotReadable(f"file too large ({status.st_size} bytes > {limit})")
        return file.read(limit + 1)


def filter_reason(score: Score, options: PreprocessOptions) -> str | None:
    """Why a readable score is not kept, or None. Reasons are the keys of the report."""
    counts = score.note_counts()
    total = len(score.notes)
    if total == 0:
        return "empty"
    if total < options.min_notes:
        return "too few notes"
    if total > options.max_notes:
        return "too many notes"
    if score.seconds > options.max_minutes * 60:
        return "too long"
    if options.require_instruments and not score.has_programs and DRUMS.index not in counts:
        return "no instrument information"
    melodic = [i for i in lead_order([counts.get(i, 0) for i in range(len(INSTRUMENTS))])
               if i != DRUMS.index]
    if not melodic and not options.keep_drums_only:
        return "drums only"
    if len(melodic) >= 2:
        first, second = counts[melodic[0]], counts[melodic[1]]
        if first - second <= options.lead_margin * first:
            return "several lead parts"
    return None


def _worker(args):
    path, options, config = args
    return process_file(path, options, config)


def _results(files, options, config, workers) -> Iterator[dict]:
    jobs = ((path, options, config) for path in files)
    if workers <= 1:
        yield from map(_worker, jobs)
        return
    context = multiprocessing.get_context("spawn" if os.name == "nt" else "fork")
    with context.Pool(workers) as pool:
        # imap keeps input order (deterministic output); a few chunks in flight bound memory
        yield from pool.imap(_worker, jobs, chunksize=4)


def preprocess(
    sources: list[str | os.PathLike],
    out: str | os.PathLike,
    *,
    options: PreprocessOptions = PreprocessOptions(),
    config: TokenizerConfig = TokenizerConfig(),
    workers: int | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> PreprocessReport:
    """Build a data directory at `out` from the MIDI files under `sources`."""
    options.validate()
    named = out = Path(out)
    if out.is_symlink() and out.is_dir():  # --out LINK: the data set it points to is replaced,
        out = out.resolve()  # the link stays (renaming the link itself would replace it)
    _clear_killed_runs(out)  # first: it may put back the data set a killed --force run moved
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a directory", hint="choose another --out")
    if out.exists() and any(_holds(out, source) for source in sources):
        # --force deletes the old directory: never when the inputs live in it
        raise UsageError(f"{out} holds the input files", hint="choose another --out")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise OutputExistsError(f"{out} already exists", hint="pass --force to replace it")
        # --force replaces only what banger wrote: a folder with a banger data manifest
        if not is_data_set(out):
            raise OutputExistsError(
                f"{out} is not a banger data set (no banger manifest.json): --force replaces "
                "only folders banger wrote", hint="choose another --out, or empty it yourself")
        checkpoints = sorted(str(p.relative_to(out)) for p in out.rglob("*.safetensors"))
        if checkpoints:  # a training run put there: not part of the data set
            raise OutputExistsError(
                f"{out} also holds {', '.join(checkpoints[:3])}: --force would delete it",
                hint="move the checkpoints elsewhere first, or choose another --out")
    files = find_midi_files(sources)
    if not files:
        raise DataError(f"no .mid/.midi files found in {', '.join(map(str, sources))}")
    workers = max(1, workers or os.cpu_count() or 1)
    report = PreprocessReport(out=named, found=len(files))
    started = time.perf_counter()

    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        with writing(out):  # a full disk or a read-only folder: one clear error, out untouched
            out.parent.mkdir(parents=True, exist_ok=True)
            staging.mkdir()
            _build(staging, files, options, config, workers, report, progress)
            report.seconds = time.perf_counter() - started
            if sum(report.kept.values()) == 0:
                reasons = ", ".join(f"{n} {r}" for r, n in report.skipped.most_common())
                raise DataError(
                    f"no file was kept out of {len(files)} ({reasons})",
                    hint="check the inputs, or relax the filters (see `banger preprocess --help`)",
                )
            _write_json(staging / "manifest.json", report.manifest)
            _swap_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _build(staging, files, options, config, workers, report, progress) -> None:
    writers = {split: ShardWriter(staging, split) for split in ("train", "validation")}
    instruments: Counter = Counter()
    seen: set[str] = set()
    # a file name that is not UTF-8 (its bytes as \udcXX) is written with backslashes
    with open(staging / "skipped.csv", "w", newline="", encoding="utf-8",
              errors="backslashreplace") as handle:
        skipped = csv.writer(handle)
        skipped.writerow(["path", "reason"])
        for done, result in enumerate(_results(files, options, config, workers), 1):
            digest = result.get("sha256")
            if digest and digest in seen:
                reason = "duplicate"
                report.duplicates += 1
            else:
                reason = result.get("skip")
                if digest:
                    seen.add(digest)
            if reason:
                report.skipped[reason.split(":")[0]] += 1
                skipped.writerow([result["path"], reason])
            else:
                split = split_of(digest, options.val_fraction)
                ids = result.pop("ids")
                writers[split].add(ids, {**result, "tokens": len(ids)})
                instruments.update(result["instruments"])
                report.kept[split] += 1
            if progress:
                progress(done, len(files))
        handle.flush()
        os.fsync(handle.fileno())
    splits = {split: writer.close() for split, writer in writers.items()}
    report.notes = sum(s["notes"] for s in splits.values())
    report.tokens = sum(s["tokens"] for s in splits.values())
    report.manifest = {
        "format": DATA_FORMAT,
        "format_version": DATA_FORMAT_VERSION,
        "tokenizer": config.to_dict(),
        "splits": splits,
        "instruments": {inst.name: instruments.get(inst.name, 0) for inst in INSTRUMENTS},
        "totals": {"files": len(files), "kept": sum(report.kept.values()),
                   "notes": report.notes, "tokens": report.tokens},
        "skipped": dict(report.skipped.most_common()),
        "options": asdict(options),
    }


def _holds(directory: Path, path: str | os.PathLike) -> bool:
    directory, path = directory.resolve(), Path(path).resolve()
    return directory == path or directory in path.parents


def _write_json(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=2) + "\n"
    atomic_write(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def _clear_killed_runs(out: Path) -> None:
    """Tidy up after runs that were killed (their process is gone): remove their staging
    directories, and put back a previous data set that a --force run had moved aside when
    it was killed before moving its own into place."""
    for stale in sorted(out.parent.glob(f".{out.name}.*-*")):
        kind, _, pid = stale.name[len(out.name) + 2 :].rpartition("-")
        if kind not in ("partial", "old") or not pid.isdigit():
            continue
        if int(pid) != os.getpid() and process_alive(int(pid)):  # our own pid: reused, so stale
            continue
        if kind == "old" and not out.exists():
            with writing(out):
                os.replace(stale, out)
        else:
            shutil.rmtree(stale, ignore_errors=True)


def _swap_into_place(staging: Path, out: Path) -> None:
    """Rename the finished staging directory to `out`, moving an old one aside first."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)


__all__ = ["BangerError", "PreprocessOptions", "PreprocessReport", "find_midi_files", "preprocess"]
