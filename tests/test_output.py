"""Writing pieces: names from the template, no overwriting without force (not even by a
run racing this one), no half-written or temporary files left, piano rolls that are PNGs."""

from __future__ import annotations

import io
import os
import struct
import threading
import zlib
from pathlib import Path

import mido
import pytest
import torch

import bangercli.generation.save as output_module
from bangercli.errors import BangerError, OutputExistsError, UsageError
from bangercli.generation.generate import generate
from bangercli.generation.request import Request
from bangercli.api import Banger
from bangercli.model.network import PRESETS, build_model
from bangercli.generation.save import check_template, save_pieces
from bangercli.midi.tokenizer import Tokenizer

CONFIG = PRESETS["tiny"]


@pytest.fixture(scope="module")
def banger() -> Banger:
    torch.manual_seed(0)
    return Banger(build_model(CONFIG), Tokenizer(), CONFIG)


@pytest.fixture(scope="module")
def pieces(banger):
    """Two pieces, 12 bars at 90 bpm, seed 11 (an untrained model writes a few notes)."""
    result = generate(banger, Request(instruments=("bass", "piano"), only=True, drums=True,
                                      bars=12, bpm=90.0, variants=2, seed=11))
    assert all(piece.notes for piece in result)
    return result


@pytest.fixture(scope="module")
def other_pieces(banger):
    return generate(banger, Request(instruments=("bass", "piano"), only=True, drums=True,
                                    bars=12, bpm=90.0, variants=2, seed=12))


def midi_bytes(piece) -> bytes:
    buffer = io.BytesIO()
    piece.midi.save(file=buffer)
    return buffer.getvalue()


def lead_of(piece) -> str:
    return piece.instruments[0] if piece.instruments else ("drums" if piece.drums else "silence")


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def save(pieces, folder, **options):
    return save_pieces(pieces, folder, audio=None, **options)


# --- names -------------------------------------------------------------------------------


def test_default_names_and_contents(pieces, tmp_path):
    saved = save(pieces, tmp_path / "new" / "folder")  # created on demand
    assert [s.midi.name for s in saved] == [f"{lead_of(p)}-11-{n}.mid"
                                            for n, p in enumerate(pieces, 1)]
    for record, piece in zip(saved, pieces):
        assert record.midi.read_bytes() == midi_bytes(piece)
        assert record.audio is None and record.piano_roll is None
        assert abs(mido.MidiFile(record.midi).length - 12 * 4 * mido.bpm2tempo(90.0) / 1e6) < 1e-6
    assert listing(tmp_path / "new" / "folder") == sorted(s.midi.name for s in saved)


def test_every_template_field(pieces, tmp_path):
    saved = save(pieces, tmp_path, template="{n}_{lead}_{instruments}_{drums}_{seed}_{bars}_{bpm}")
    for n, (record, piece) in enumerate(zip(saved, pieces), 1):
        lead = lead_of(piece)
        instruments = "+".join(piece.instruments) or "none"
        drums = "drums" if piece.drums else "nodrums"
        assert record.midi.name == f"{n}_{lead}_{instruments}_{drums}_11_12_90.mid"


def test_json_record_has_the_documented_keys(pieces, tmp_path):
    record = save(pieces[:1], tmp_path)[0].to_json()
    assert set(record) == {"midi", "audio", "piano_roll", "seed", "instruments", "drums", "bars",
                           "bpm", "notes", "seconds"}
    assert record["seed"] == 11 and record["bars"] == 12 and record["bpm"] == 90.0
    assert record["seconds"] == 32.0 and record["notes"] == len(pieces[0].notes)
    assert record["audio"] is None and Path(record["midi"]).is_file()


@pytest.mark.parametrize("template, message", [
    ("{title}-{n}", "unknown field"),
    ("{lead", "bad --name template"),
    ("out/{lead}-{n}", "plain file name"),
    ("  ", "plain file name"),
    ("{seed}-{bars}", "same name"),  # two pieces, one name
])
def test_bad_templates_are_refused_before_writing(pieces, tmp_path, template, message):
    with pytest.raises(UsageError, match=message):
        save(pieces, tmp_path / "out", template=template)
    assert not (tmp_path / "out").exists() or listing(tmp_path / "out") == []


def test_check_template_accepts_the_documented_fields():
    check_template("{lead}-{instruments}-{drums}-{seed}-{n}-{bars}-{bpm}")


# --- never clobbering --------------------------------------------------------------------


def test_existing_files_are_kept_without_force_and_replaced_with_it(pieces, tmp_path):
    target = tmp_path / "song-2.mid"
    target.write_bytes(b"the user's own file")
    with pytest.raises(OutputExistsError, match="song-2.mid already exists"):
        save(pieces, tmp_path, template="song-{n}")
    assert target.read_bytes() == b"the user's own file"
    assert listing(tmp_path) == ["song-2.mid"]  # nothing written, not even song-1

    saved = save(pieces, tmp_path, template="song-{n}", force=True)
    assert target.read_bytes() == midi_bytes(pieces[1])
    assert [s.midi for s in saved] == [tmp_path / "song-1.mid", target]
    assert listing(tmp_path) == ["song-1.mid", "song-2.mid"]


def test_a_run_that_takes_the_name_first_wins(pieces, other_pieces, tmp_path, monkeypatch):
    """Another process creates the file between our check and our write: ours fails, theirs
    stays, and no temporary file is left behind."""
    real_link = os.link

    def link_after_a_rival(source, destination):
        if not Path(destination).exists():
            Path(destination).write_bytes(b"the rival's file")
        return real_link(source, destination)

    monkeypatch.setattr(output_module.os, "link", link_after_a_rival)
    with pytest.raises(OutputExistsError):
        save(pieces, tmp_path, template="song-{n}")
    assert (tmp_path / "song-1.mid").read_bytes() == b"the rival's file"
    assert listing(tmp_path) == ["song-1.mid"]


def test_two_concurrent_runs_never_clobber_each_other(pieces, other_pieces, tmp_path):
    """Two savers start together on the same names: for each file exactly one wins, the
    loser raises, and every file holds one saver's complete bytes."""
    for attempt in range(5):
        folder = tmp_path / str(attempt)
        start = threading.Barrier(2)
        results: dict[int, object] = {}

        def run(which: int, batch) -> None:
            start.wait()
            try:
                results[which] = save(batch, folder, template="song-{n}")
            except BangerError as err:
                results[which] = err

        threads = [threading.Thread(target=run, args=(i, batch))
                   for i, batch in enumerate((pieces, other_pieces))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = [i for i, r in results.items() if isinstance(r, list)]
        losers = [i for i, r in results.items() if isinstance(r, OutputExistsError)]
        assert len(winners) == 1 and len(losers) == 1, results
        winning = (pieces, other_pieces)[winners[0]]
        assert listing(folder) == ["song-1.mid", "song-2.mid"]
        assert [(folder / f"song-{n}.mid").read_bytes() for n in (1, 2)] == \
            [midi_bytes(p) for p in winning]


def test_a_failed_write_leaves_no_file_at_all(pieces, tmp_path, monkeypatch):
    def disk_full(source, destination):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(output_module.os, "link", disk_full)
    with pytest.raises(BangerError, match="cannot write .*No space left"):
        save(pieces, tmp_path)
    assert listing(tmp_path) == []  # no .part file, no final file


def test_an_out_path_that_is_a_file_is_an_error(pieces, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BangerError, match="cannot create"):
        save(pieces, blocker / "sub")


def test_written_files_get_normal_permissions(pieces, tmp_path):
    mask = os.umask(0o022)
    try:
        record = save(pieces[:1], tmp_path)[0]
    finally:
        os.umask(mask)
    assert record.midi.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600


# --- piano rolls -------------------------------------------------------------------------


def read_png(path: Path) -> tuple[int, int, bytes]:
    """Width, height and raw scanlines of an 8-bit RGB PNG, checking signature and CRCs."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = {}, 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + length
    assert list(chunks)[0] == b"IHDR" and list(chunks)[-1] == b"IEND"
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour) == (8, 2)
    return width, height, zlib.decompress(chunks[b"IDAT"])


def test_piano_roll_is_a_png_one_column_pair_per_step(pieces, tmp_path):
    saved = save(pieces, tmp_path, piano_roll=True)
    for record, piece in zip(saved, pieces):
        assert record.piano_roll == record.midi.with_suffix(".png")
        width, height, raw = read_png(record.piano_roll)
        assert width == 12 * 32 * 2  # 12 bars of 32 steps, 2 pixels a step
        pitches = [n.pitch for n in piece.notes if n.instrument != 11] or [50, 70]
        span = min(max(pitches) + 2, 127) - max(min(pitches) - 2, 0) + 1
        drum_sounds = {n.pitch for n in piece.notes if n.instrument == 11}
        # pitch rows, then (with drums) a separator row and one row per drum sound
        assert height == (span + (1 + len(drum_sounds) if drum_sounds else 0)) * 3
        assert len(raw) == height * (1 + 3 * width)
    assert not [name for name in listing(tmp_path) if name.endswith(".part")]


@pytest.mark.parametrize("template", ["{n:>99999}", "{lead:d}", "{n!z}", "x" * 250 + "{n}"])
def test_the_library_refuses_templates_that_cannot_name_a_file(pieces, tmp_path, template):
    """save_pieces checks what the command line checks: a bad --name fails before anything
    is written, for Python callers too."""
    with pytest.raises(UsageError):
        save_pieces(pieces, tmp_path / "out", template=template, audio=None)
    assert not (tmp_path / "out").exists()
