"""`banger preprocess`: which files are kept, why others are skipped, what lands on disk,
and that the output depends only on the inputs (not on workers or file names)."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bangercli.cli.app import app
from bangercli.errors import DataError, OutputExistsError, UsageError
from bangercli.midi.instruments import INSTRUMENTS
from bangercli.data.preprocess import PreprocessOptions, find_midi_files, preprocess
from bangercli.midi.score import Note
from bangercli.data.shards import SPLITS, Shards, load_manifest
from bangercli.midi.tokenizer import Tokenizer, TokenizerConfig
from midi_fixtures import TPB, band, midi_file, note, program, save, tempo, to_bytes, track

TOK = Tokenizer()
QUIET = {"workers": 1}


def melody(channel: int, count: int, *, start: int = 0, spacing: int = TPB // 2,
           first_pitch: int = 60) -> list:
    events = []
    for i in range(count):
        events += note(channel, first_pitch + i % 24, start + i * spacing, spacing)
    return events


# Files every filter has something to say about. Names sort in this order.
GOOD = {
    "good/a.mid": band(21),
    "good/b.MID": band(22),  # upper-case suffixes are found too
    "good/c.midi": band(23, drums=False),
    "good/sub/d.MIDI": band(24),
    "good/e.mid": band(25, bars=8),
    "good/f.mid": band(26, drums=False, bars=2),
    "good/drums-only.mid": midi_file(track(melody(9, 16, first_pitch=35))),
    # first note in bar 3 (step 70): trimming drops two whole bars
    "good/late.mid": midi_file(track(program(0, 40), melody(0, 12, start=70 * TPB // 8))),
}
BAD = {
    "bad/corrupt.mid": (to_bytes(band(27))[:-30], "unreadable"),
    "bad/empty-file.mid": (b"", "unreadable"),
    "bad/not-midi.mid": (b"Just some text.\n", "unreadable"),
    "bad/no-notes.mid": (to_bytes(midi_file(track(tempo(90)))), "empty"),
    "bad/few-notes.mid": (to_bytes(midi_file(track(program(0, 0), melody(0, 3)))), "too few notes"),
    "bad/no-programs.mid": (to_bytes(midi_file(track(melody(0, 16)))), "no instrument information"),
    "bad/two-leads.mid": (
        to_bytes(midi_file(track(program(0, 0), melody(0, 10)),
                           track(program(1, 24), melody(1, 10, first_pitch=48)))),
        "several lead parts",
    ),
    "later/a-copy.mid": (to_bytes(GOOD["good/a.mid"]), "duplicate"),  # sorts after good/
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for name, midi in GOOD.items():
        save(midi, root / name)
    for name, (data, _) in BAD.items():
        save(data, root / name)
    (root / "good" / "notes.txt").write_text("not a midi file, and not named like one")
    return root


def run(corpus: Path, out: Path, **kwargs):
    return preprocess([corpus], out, **{**QUIET, **kwargs})


def read_skipped(out: Path) -> dict[str, str]:
    with open(out / "skipped.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["path", "reason"]
    return {row[0]: row[1] for row in rows[1:]}


def pieces(out: Path, split: str) -> list[dict]:
    lines = (out / f"{split}.pieces.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def expected_ids(path: Path, *, trim: bool) -> list[int]:
    """Token ids of a kept file, computed without preprocess: whole empty bars dropped."""
    notes = TOK.read(path).notes
    if trim:
        shift = min(n.start for n in notes) // 32 * 32
        notes = [n._replace(start=n.start - shift) for n in notes]
    return TOK.encode_notes(notes)


def tree_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


# --- discovery ---------------------------------------------------------------------------


def test_discovery_is_recursive_case_insensitive_and_sorted(tmp_path):
    for name in ["b.MID", "a.mid", "sub/c.Midi", "sub/deeper/d.midi", "e.txt", "f.mid.bak"]:
        save(b"", tmp_path / name)
    (tmp_path / "folder.mid").mkdir()  # a folder named like a file is searched, not taken
    found = find_midi_files([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a.mid", "b.MID", "sub/c.Midi", "sub/deeper/d.midi"
    ]
    # a file named on the command line is taken whatever its suffix; repeats count once
    assert find_midi_files([tmp_path / "e.txt", tmp_path / "a.mid", tmp_path]) == sorted(
        [*found, tmp_path / "e.txt"], key=str
    )
    with pytest.raises(UsageError):
        find_midi_files([tmp_path / "missing"])


# --- what is kept and what is skipped ----------------------------------------------------


def test_kept_and_skipped_files_are_counted_and_listed(corpus, tmp_path):
    out = tmp_path / "data"
    calls = []
    report = run(corpus, out, progress=lambda done, total: calls.append((done, total)))
    total = len(GOOD) + len(BAD)
    assert report.found == total
    assert sum(report.kept.values()) == len(GOOD)
    assert report.duplicates == 1
    assert report.skipped == Counter(reason for _, reason in BAD.values())
    assert calls == [(i, total) for i in range(1, total + 1)]

    skipped = read_skipped(out)
    reasons = {Path(p).relative_to(corpus).as_posix(): r.split(":")[0] for p, r in skipped.items()}
    assert reasons == {name: reason for name, (_, reason) in BAD.items()}
    assert skipped[str(corpus / "bad/empty-file.mid")].startswith("unreadable: empty file")
    kept = [p["path"] for split in SPLITS for p in pieces(out, split)]
    assert sorted(Path(p).relative_to(corpus).as_posix() for p in kept) == sorted(GOOD)


def test_the_data_reads_back_as_the_tokens_of_the_kept_files(corpus, tmp_path):
    for trim in (True, False):
        out = tmp_path / f"trim-{trim}"
        run(corpus, out, options=PreprocessOptions(val_fraction=0.5, trim_silence=trim))
        seen = 0
        for split in SPLITS:
            shards = Shards(out, split)
            infos = pieces(out, split)
            assert len(shards) == len(infos)
            for i, info in enumerate(infos):
                ids = expected_ids(Path(info["path"]), trim=trim)
                assert shards[i].tolist() == ids
                assert info["tokens"] == len(ids)
                assert info["sha256"] == hashlib.sha256(Path(info["path"]).read_bytes()).hexdigest()
                seen += 1
        assert seen == len(GOOD)
    late = str(corpus / "good/late.mid")
    trimmed = expected_ids(Path(late), trim=True)
    assert trimmed != TOK.encode(Path(late))
    assert trimmed[3] == TOK.time_token(70 - 64)  # 70 steps in, less two bars of 32


def test_manifest_describes_the_data(corpus, tmp_path):
    out = tmp_path / "data"
    report = run(corpus, out)
    manifest = load_manifest(out)
    assert manifest == report.manifest
    assert manifest["format"] == "banger-data" and manifest["format_version"] == 1
    assert TokenizerConfig.from_dict(manifest["tokenizer"]) == TokenizerConfig()
    for split in SPLITS:
        shards = Shards(out, split)
        assert manifest["splits"][split]["pieces"] == len(shards)
        assert manifest["splits"][split]["tokens"] == int(shards.lengths.sum())
        assert manifest["splits"][split]["notes"] == sum(p["notes"] for p in pieces(out, split))

    counts = Counter()
    for split in SPLITS:
        for info in pieces(out, split):
            notes = TOK.read(Path(info["path"])).notes
            counts.update(INSTRUMENTS[n.instrument].name for n in notes)
    assert manifest["instruments"] == {inst.name: counts[inst.name] for inst in INSTRUMENTS}
    assert list(manifest["instruments"]) == [inst.name for inst in INSTRUMENTS]
    assert manifest["totals"] == {
        "files": len(GOOD) + len(BAD), "kept": len(GOOD),
        "notes": sum(counts.values()), "tokens": report.tokens,
    }
    assert manifest["skipped"] == dict(report.skipped)
    assert manifest["options"]["val_fraction"] == 0.1


def test_filters_for_size_length_and_drums_only(corpus, tmp_path):
    crowded = midi_file(track(program(0, 0), melody(0, 150, spacing=TPB // 4)))
    slow = midi_file(track(tempo(60)), track(program(0, 0), melody(0, 10, spacing=8 * TPB)))
    extra = tmp_path / "extra"
    save(crowded, extra / "crowded.mid")
    save(slow, extra / "slow.mid")  # 80 beats at 60 bpm: 80 s
    options = PreprocessOptions(max_notes=120, max_minutes=1.0, keep_drums_only=False)
    report = preprocess([corpus, extra], tmp_path / "data", options=options, workers=1)
    skipped = {Path(p).name: r for p, r in read_skipped(tmp_path / "data").items()}
    assert skipped["crowded.mid"] == "too many notes"
    assert skipped["slow.mid"] == "too long"
    assert skipped["drums-only.mid"] == "drums only"
    assert report.skipped["too many notes"] == 1 and report.skipped["too long"] == 1
    assert sum(report.kept.values()) == len(GOOD) - 1


def test_files_over_the_size_limit_are_skipped_unread(tmp_path, monkeypatch):
    import bangercli.data.preprocess

    small, big = to_bytes(band(31, bars=1)), to_bytes(band(32, bars=8))
    save(small, tmp_path / "in" / "small.mid")
    save(big, tmp_path / "in" / "big.mid")
    monkeypatch.setattr(bangercli.data.preprocess, "MAX_FILE_BYTES", len(small))
    report = preprocess([tmp_path / "in"], tmp_path / "data", workers=1)
    assert report.kept["train"] + report.kept["validation"] == 1
    skipped = read_skipped(tmp_path / "data")
    assert skipped == {
        str(tmp_path / "in" / "big.mid"):
        f"unreadable: file too large ({len(big)} bytes > {len(small)})"
    }


def test_lead_margin_and_instrument_requirement_are_options(corpus, tmp_path):
    lenient = PreprocessOptions(require_instruments=False)
    report = run(corpus, tmp_path / "lenient", options=lenient)
    assert "no instrument information" not in report.skipped
    assert sum(report.kept.values()) == len(GOOD) + 1
    strict = PreprocessOptions(lead_margin=0.9)  # band(): bass has a quarter of the piano's notes
    report = run(corpus, tmp_path / "strict", options=strict)
    assert report.skipped["several lead parts"] == 1 + 6  # two-leads, and the six bands
    assert sum(report.kept.values()) == 2  # drums only, and a single melodic part


# --- splits and determinism --------------------------------------------------------------


def test_output_bytes_do_not_depend_on_the_number_of_workers(corpus, tmp_path):
    options = PreprocessOptions(val_fraction=0.5)
    one = run(corpus, tmp_path / "one", options=options, workers=1)
    two = run(corpus, tmp_path / "two", options=options, workers=2)
    assert one.kept == two.kept
    assert one.kept["train"] and one.kept["validation"]  # both splits used at 0.5
    assert tree_bytes(tmp_path / "one") == tree_bytes(tmp_path / "two")


def test_the_split_follows_the_content_not_the_name(corpus, tmp_path):
    renamed = tmp_path / "renamed"
    for name, midi in GOOD.items():
        save(midi, renamed / ("x-" + Path(name).name.lower()))
    options = PreprocessOptions(val_fraction=0.5)
    run(corpus, tmp_path / "original", options=options)
    run(renamed, tmp_path / "copy", options=options)

    def split_by_hash(out):
        return {p["sha256"]: split for split in SPLITS for p in pieces(out, split)}

    assert split_by_hash(tmp_path / "original") == split_by_hash(tmp_path / "copy")


@pytest.mark.parametrize("fraction, empty", [(0.0, "validation"), (1.0, "train")])
def test_val_fraction_edges_put_everything_in_one_split(corpus, tmp_path, fraction, empty):
    out = tmp_path / "data"
    report = run(corpus, out, options=PreprocessOptions(val_fraction=fraction))
    full = "train" if empty == "validation" else "validation"
    assert report.kept == {full: len(GOOD), empty: 0}
    assert len(Shards(out, empty)) == 0 and len(Shards(out, full)) == len(GOOD)
    assert (out / f"{empty}.tokens").stat().st_size == 0


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_val_fraction_out_of_range_is_a_usage_error(corpus, tmp_path, fraction):
    with pytest.raises(UsageError):
        run(corpus, tmp_path / "data", options=PreprocessOptions(val_fraction=fraction))
    assert not (tmp_path / "data").exists()


# --- the output directory ----------------------------------------------------------------


def test_an_existing_output_is_kept_without_force_and_replaced_with_it(corpus, tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "precious.txt").write_text("mine")
    with pytest.raises(OutputExistsError) as caught:
        run(corpus, out)
    assert "--force" in caught.value.hint
    assert (out / "precious.txt").read_text() == "mine"
    with pytest.raises(OutputExistsError, match="not a banger data set"):
        run(corpus, out, force=True)  # --force replaces only what banger wrote
    assert (out / "precious.txt").read_text() == "mine"
    (out / "precious.txt").unlink()
    run(corpus, out)
    (out / "notes.txt").write_text("a note left in a data set banger wrote")
    run(corpus, out, force=True)
    assert not (out / "notes.txt").exists()
    assert load_manifest(out)["totals"]["kept"] == len(GOOD)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no staging or old copy left


def test_force_never_replaces_a_directory_that_holds_the_inputs(tmp_path):
    song = save(band(33), tmp_path / "music" / "songs" / "a.mid")
    for source, out in [(song.parent, song.parent), (song.parent, tmp_path / "music"),
                        (song, tmp_path / "music")]:
        with pytest.raises(UsageError, match="holds the input files"):
            preprocess([source], out, force=True, workers=1)
    assert song.read_bytes() == to_bytes(band(33))


def test_an_empty_output_directory_is_used(corpus, tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    run(corpus, out)
    assert (out / "manifest.json").is_file()


def test_an_output_that_is_a_file_is_refused(corpus, tmp_path):
    out = tmp_path / "data"
    out.write_text("a file")
    with pytest.raises(OutputExistsError):
        run(corpus, out, force=True)
    assert out.read_text() == "a file"


def test_nothing_kept_is_an_error_and_leaves_nothing_behind(corpus, tmp_path):
    with pytest.raises(DataError) as caught:
        preprocess([corpus / "bad"], tmp_path / "data", workers=1)
    assert "no file was kept out of 7" in str(caught.value)
    assert "unreadable" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_no_midi_files_is_an_error(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "readme.txt").write_text("hello")
    with pytest.raises(DataError, match="no .mid/.midi files"):
        preprocess([tmp_path / "in"], tmp_path / "data", workers=1)


def test_staging_left_by_a_killed_run_is_cleaned_up(corpus, tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    stale = tmp_path / f".data.partial-{int(finished.stdout)}"
    stale.mkdir()
    (stale / "train.tokens").write_bytes(b"\0" * 10)
    live = tmp_path / ".data.partial-1"  # process 1 is alive: that run may still be going
    live.mkdir()
    run(corpus, tmp_path / "data")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".data.partial-1", "data"]


def test_shards_refuse_what_preprocess_did_not_make(corpus, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        Shards(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no manifest.json"):
        Shards(tmp_path / "empty")
    out = tmp_path / "data"
    run(corpus, out)
    with pytest.raises(DataError, match="unknown split"):
        Shards(out, "test")
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(DataError, match="data format 99"):
        Shards(out)
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "train.tokens").write_bytes((out / "train.tokens").read_bytes()[:-2])
    with pytest.raises(DataError, match="does not match"):
        Shards(out)


def test_tokens_are_little_endian_uint16_and_the_index_is_int64(corpus, tmp_path):
    out = tmp_path / "data"
    run(corpus, out, options=PreprocessOptions(val_fraction=0.0))
    index = np.load(out / "train.index.npy")
    assert index.dtype == np.int64 and index[0] == 0 and len(index) == len(GOOD) + 1
    raw = np.frombuffer((out / "train.tokens").read_bytes(), dtype="<u2")
    first = pieces(out, "train")[0]
    assert raw[index[0]:index[1]].tolist() == expected_ids(Path(first["path"]), trim=True)


# --- through the command line ------------------------------------------------------------


def banger(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bangercli", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow  # a real process or a whole run: about 1.5 s or more (CI runs it)
def test_cli_exit_codes_and_messages(corpus, tmp_path):
    out = tmp_path / "data"
    kept = banger("preprocess", str(corpus), "--out", str(out), "--workers", "1")
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout == f"{out}\n"  # stdout: the result only
    assert "kept: train" in kept.stderr  # the summary goes to stderr
    assert load_manifest(out)["totals"]["kept"] == len(GOOD)

    again = banger("preprocess", str(corpus), "--out", str(out), "-q")
    assert again.returncode == 1
    assert again.stdout == ""
    assert again.stderr.splitlines() == [
        f"error: {out} already exists (hint: pass --force to replace it)"
    ]

    nothing = banger("preprocess", str(corpus / "bad"), "--out", str(tmp_path / "x"), "-q")
    assert nothing.returncode == 1
    lines = nothing.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no file was kept out of 7 (")
    assert not (tmp_path / "x").exists()


def test_cli_force_json_and_options(corpus, tmp_path):
    out = tmp_path / "data"
    run(corpus, out)  # a data set banger wrote: --force may replace it
    (out / "old").write_text("old")
    runner = CliRunner()
    result = runner.invoke(app, ["preprocess", str(corpus), "-o", str(out), "--force", "--json",
                                 "-q", "-j", "1", "--val-fraction", "0", "--no-keep-drums-only"])
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest == load_manifest(out)
    assert manifest["splits"]["train"]["pieces"] == len(GOOD) - 1
    assert manifest["skipped"]["drums only"] == 1
    assert manifest["options"]["keep_drums_only"] is False
    assert not (out / "old").exists()


def test_cli_refuses_bad_option_values(corpus, tmp_path):
    result = banger("preprocess", str(corpus), "--out", str(tmp_path / "d"), "--val-fraction", "2")
    assert result.returncode == 2
    assert result.stderr.startswith("error: --val-fraction must be in [0, 1]")
    result = CliRunner().invoke(app, ["preprocess", str(corpus), "-o", str(tmp_path / "d"),
                                      "--workers", "-1"])
    assert isinstance(result.exception, UsageError)
    assert "--workers" in str(result.exception)
    assert not (tmp_path / "d").exists()


def test_tokenizer_notes_match_the_manifest_note_count(corpus, tmp_path):
    out = tmp_path / "data"
    run(corpus, out, options=PreprocessOptions(val_fraction=0.0))
    shards = Shards(out)
    for i, info in enumerate(pieces(out, "train")):
        score = TOK.read(Path(info["path"]))
        assert info["notes"] == len(score.notes)
        decoded = TOK.decode_score(shards[i])
        assert len(decoded.notes) == info["notes"] and decoded.invalid_tokens == 0
        assert all(isinstance(n, Note) for n in decoded.notes)
