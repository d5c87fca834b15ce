"""Checking a soundfont before a synthesizer opens it.

symusic's loader can crash the whole process (SIGSEGV) on an SF2/SF3 file whose preset
tables point out of range, and FluidSynth prints its own errors on a bad file after banger
has started writing. So every soundfont is checked here first: the RIFF 'sfbk' header, the
chunk layout and every index in the preset, instrument and sample tables. Only the small
'pdta' part is read (about 140 KB for the shipped soundfont), never the sample data.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO, Iterator

from ..errors import UsageError

HINT = "pass a General MIDI .sf2 or .sf3 soundfont"

# Record layout of each 'pdta' table (SF2 2.04, section 7); each table ends in a terminal record.
_TABLES = {
    "phdr": "<20sHHHIII",  # name, preset, bank, first preset bag, library, genre, morphology
    "pbag": "<HH",  # first generator, first modulator
    "pmod": "<HHhHH",  # source, destination, amount, amount source, transform
    "pgen": "<HH",  # operator, amount
    "inst": "<20sH",  # name, first instrument bag
    "ibag": "<HH",
    "imod": "<HHhHH",
    "igen": "<HH",
    "shdr": "<20sIIIIIBbHH",  # name, start, end, loop start, loop end, rate, key, cents, link, type
}
_INSTRUMENT = 41  # the preset generator that names an instrument
_SAMPLE_ID = 53  # the instrument generator that names a sample
_GENERATORS = 61  # operators 0..60 are defined by SF2 2.04
_LINKED = 0x8000  # a modulator destination with this bit set is another modulator
_COMPRESSED = 0x10  # SF3: an Ogg Vorbis sample, start and end are byte offsets
_ROM = 0x8000  # a ROM sample carries no data in the file


class SoundfontError(UsageError):
    """A soundfont that is missing, unreadable or not a well-formed SF2/SF3 file."""

    def __init__(self, message: str, *, hint: str | None = HINT) -> None:
        super().__init__(message, hint=hint)


class _Damaged(Exception):
    """What is wrong inside the file; check_soundfont turns it into a SoundfontError."""


def check_soundfont(path: str | os.PathLike, *, hint: str = HINT, allow_dls: bool = False) -> Path:
    """`path` as a Path if it is a readable, well-formed SF2/SF3 soundfont (or, with
    `allow_dls`, a RIFF DLS file, which only FluidSynth reads); a one-line SoundfontError
    otherwise. Reads the headers and the preset tables only."""
    path = Path(path).expanduser()
    if not path.exists():
        raise SoundfontError(f"soundfont {path} does not exist", hint=hint)
    if not path.is_file():
        raise SoundfontError(f"soundfont {path} is not a file", hint=hint)
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
            if head[:4] == b"RIFF" and head[8:12] == b"DLS ":
                if allow_dls:
                    return path
                raise SoundfontError(
                    f"soundfont {path} is a DLS file, which the built-in renderer cannot play",
                    hint="pass --synth fluidsynth, or a .sf2/.sf3 soundfont")
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"sfbk":
                raise SoundfontError(
                    f"soundfont {path} is not a .sf2/.sf3 file (no RIFF sfbk header)", hint=hint)
            _check_structure(handle, head, os.fstat(handle.fileno()).st_size)
    except OSError as err:
        raise SoundfontError(f"cannot read soundfont {path}: {err.strerror or err}",
                             hint=hint) from None
    except _Damaged as err:
        raise SoundfontError(f"soundfont {path} is damaged: {err}", hint=hint) from None
    except struct.error:
        raise SoundfontError(f"soundfont {path} is damaged: a table is cut short",
                             hint=hint) from None
    return path


def _chunks(handle: BinaryIO, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(id, payload offset, payload size) of each RIFF chunk between `start` and `end`.
    Tolerates a missing pad byte after an odd-sized chunk: some SF3 writers leave it out
    (the shipped FluidR3Mono_GM.sf3 among them)."""
    pos = start
    while pos + 8 <= end:
        handle.seek(pos)
        head = handle.read(8)
        if len(head) < 8:
            raise _Damaged("the file ends inside a chunk header")
        cid, size = head[:4], struct.unpack("<I", head[4:])[0]
        if pos + 8 + size > end:
            raise _Damaged(f"chunk {cid.decode('latin-1')!r} runs past the end of its container "
                           "(truncated file?)")
        yield cid, pos + 8, size
        pos += 8 + size
        if size & 1 and pos < end:
            handle.seek(pos)
            if handle.read(1) == b"\0":  # the pad byte: a chunk id never starts with NUL
                pos += 1


def _check_structure(handle: BinaryIO, head: bytes, file_size: int) -> None:
    riff_end = min(8 + struct.unpack("<I", head[4:8])[0], file_size)
    lists = {}
    for cid, offset, size in _chunks(handle, 12, riff_end):
        if cid == b"LIST" and size >= 4:
            handle.seek(offset)
            lists[handle.read(4)] = (offset + 4, offset + size)
    for kind in (b"INFO", b"sdta", b"pdta"):
        if kind not in lists:
            raise _Damaged(f"no {kind.decode()} list (truncated file?)")
    sample_bytes = next((size for cid, _, size in _chunks(handle, *lists[b"sdta"])
                         if cid == b"smpl"), None)
    if sample_bytes is None:
        raise _Damaged("no sample data")

    raw: dict[str, bytes] = {}
    for cid, offset, size in _chunks(handle, *lists[b"pdta"]):
        name = cid.decode("latin-1")
        if name in _TABLES:
            handle.seek(offset)
            raw[name] = handle.read(size)
    tables = {}
    for name, layout in _TABLES.items():
        data = raw.get(name)
        if data is None:
            raise _Damaged(f"no '{name}' table")
        if len(data) < struct.calcsize(layout) or len(data) % struct.calcsize(layout):
            raise _Damaged(f"the '{name}' table has a bad size ({len(data)} bytes)")
        tables[name] = list(struct.iter_unpack(layout, data))

    # presets -> preset bags -> preset generators and modulators -> instruments
    _ascending([r[3] for r in tables["phdr"]], len(tables["pbag"]) - 1, "preset bag")
    _ascending([r[0] for r in tables["pbag"]], len(tables["pgen"]) - 1, "preset generator")
    _ascending([r[1] for r in tables["pbag"]], len(tables["pmod"]) - 1, "preset modulator")
    _generators(tables["pgen"], _INSTRUMENT, len(tables["inst"]) - 1, "instrument")
    _modulators(tables["pmod"])
    # instruments -> instrument bags -> instrument generators and modulators -> samples
    _ascending([r[1] for r in tables["inst"]], len(tables["ibag"]) - 1, "instrument bag")
    _ascending([r[0] for r in tables["ibag"]], len(tables["igen"]) - 1, "instrument generator")
    _ascending([r[1] for r in tables["ibag"]], len(tables["imod"]) - 1, "instrument modulator")
    _generators(tables["igen"], _SAMPLE_ID, len(tables["shdr"]) - 1, "sample")
    _modulators(tables["imod"])
    _samples(tables["shdr"], sample_bytes)


def _ascending(starts: list[int], last: int, what: str) -> None:
    """Start indices into the next table must never decrease and never pass its last record."""
    previous = 0
    for value in starts:
        if value < previous or value > last:
            raise _Damaged(f"{what} index {value} is out of range (0..{last})")
        previous = value


def _generators(records: list[tuple], index_operator: int, count: int, what: str) -> None:
    """Every operator is a defined one, and the one naming an instrument or sample names an
    existing record (`count` of them, the terminal one excluded)."""
    for operator, amount in records[:-1]:
        if operator >= _GENERATORS:
            raise _Damaged(f"unknown generator {operator}")
        if operator == index_operator and amount >= count:
            raise _Damaged(f"{what} index {amount} is out of range (0..{count - 1})")


def _modulators(records: list[tuple]) -> None:
    for _source, destination, *_ in records[:-1]:
        if not destination & _LINKED and destination >= _GENERATORS:
            raise _Damaged(f"a modulator targets unknown generator {destination}")


def _samples(records: list[tuple], sample_bytes: int) -> None:
    """Each sample lies inside the sample data (byte offsets in SF3, 16-bit words in SF2),
    has a rate and links to an existing sample."""
    for index, (_name, start, end, _ls, _le, rate, _key, _cents, link, kind) in enumerate(
            records[:-1]):
        if kind & _ROM:
            continue
        limit = sample_bytes if kind & _COMPRESSED else sample_bytes // 2
        if not start <= end <= limit:
            raise _Damaged(f"sample {index} lies outside the sample data")
        if rate == 0:
            raise _Damaged(f"sample {index} has a sample rate of 0")
        if link >= len(records):
            raise _Damaged(f"sample {index} links to missing sample {link}")
