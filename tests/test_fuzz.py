"""Fuzzing: mutated MIDI bytes and random token ids. Every mutated file is either encoded into
well-formed ids or refused with a MidiReadError that says why, within a time and a memory
bound; any ids decode to a file that reads back to the decoded notes; `banger preprocess`
keeps the valid files of a folder of broken ones and gives a reason for every other.

The inputs come from midi_mutations.py. The default suite runs a few hundred seeded cases;
`pytest -m fuzz` runs over 10,000 and prints what happened to each kind of input as a markdown
table. Every case is a (kind, base file, number) triple, so a failure names how to rebuild it.
"""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
import time
import tracemalloc
from collections import Counter, defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import pytest

from bangercli.errors import BangerError, MidiReadError
from bangercli.midi.instruments import DRUMS
from bangercli.data.preprocess import preprocess
from bangercli.midi.midifile import MAX_FILE_BYTES, MAX_QUARTERS
from bangercli.data.shards import SPLITS
from bangercli.midi.tokenizer import Tokenizer
from conftest import corpus_files
from midi_fixtures import END_OF_TRACK, band, merged, mtrk, smf, to_bytes, vlq
from midi_mutations import MUTATIONS, TOKEN_KINDS, mutate, random_ids

TOK = Tokenizer()
HANG_SECONDS = 10.0  # a hang detector, not a benchmark: cases take milliseconds
# Inputs here stay under ~200 KB, and the reader's worst case (running-status note-ons that
# never end) peaks at ~140 bytes per input byte: a correct reader stays far below this. One
# that trusted a length field (up to 4 GB) or allocated per announced track would not.
PEAK_BYTES = 64 * 1024 * 1024
# tracemalloc makes this call-heavy code 10-20x slower (it builds a frame object per traced
# allocation), so memory is measured on every 8th case of each kind, time on all of them.
TRACE_EVERY = 8


# --- the cases: bounded, classified, failures collected with how to rebuild them ----------


class Hang(BaseException):
    """Raised by the watchdog; a BaseException so that no `except Exception` swallows it."""


@contextmanager
def watchdog(seconds: float):
    if not hasattr(signal, "setitimer"):  # Windows: no hang detection
        yield
        return

    def alarm(signum, frame):
        raise Hang(f"still running after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def reason_class(err: BangerError) -> str:
    """The message with its numbers taken out: 'truncated: chunk N claims N bytes ...'."""
    return re.sub(r"\d[\d,]*", "N", str(err))


class Tally:
    """What happened to each kind of input, the worst time and memory of a case, failures."""

    def __init__(self) -> None:
        self.outcomes: dict[str, Counter] = defaultdict(Counter)
        self.traced: Counter = Counter()
        self.seconds: dict[str, float] = defaultdict(float)  # the slowest case
        self.total: dict[str, float] = defaultdict(float)
        self.peak: dict[str, int] = defaultdict(int)
        self.failures: list[str] = []

    def run(self, what: str, case: str, check: Callable[[], str], *, traced: bool) -> None:
        """Run one case under the watchdog (and tracemalloc when `traced`); `check` returns
        its outcome and raises on a broken promise, which is recorded as a failure."""
        if traced:
            tracemalloc.start()
            self.traced[what] += 1
        started = time.perf_counter()
        try:
            with watchdog(HANG_SECONDS):
                outcome = check()
            peak = tracemalloc.get_traced_memory()[1]  # 0 when not traced
            if peak > PEAK_BYTES:
                raise MemoryError(f"peaked at {peak / 2**20:.0f} MB")
            self.peak[what] = max(self.peak[what], peak)
        except (Exception, Hang) as err:
            outcome = "FAILED"
            self.failures.append(f"{case}: {type(err).__name__}: {err}")
        finally:
            tracemalloc.stop()
        seconds = time.perf_counter() - started
        self.seconds[what] = max(self.seconds[what], seconds)
        self.total[what] += seconds
        self.outcomes[what][outcome] += 1

    def assert_clean(self) -> None:
        shown = "\n".join(self.failures[:20])
        assert not self.failures, f"{len(self.failures)} failures:\n{shown}"

    def rows(self) -> list[str]:
        """Markdown rows: What was tried | How often | What happened."""
        rows = []
        for what, outcomes in self.outcomes.items():
            happened = "; ".join(f"{n:,} {outcome}" for outcome, n in outcomes.most_common())
            happened += (f". {self.total[what]:.1f} s in all, at most {self.seconds[what]:.2f} s "
                         f"a case; at most {self.peak[what] / 2**20:.1f} MB "
                         f"(tracemalloc peak) in the {self.traced[what]:,} cases traced")
            rows.append(f"| {what} | {sum(outcomes.values()):,} | {happened} |")
        return rows


def check_ids(ids: list[int]) -> None:
    """Ids of an accepted file: all in the vocabulary, START, a drums flag, distinct
    instruments that match the notes, then notes that decode without one invalid token, END."""
    assert type(ids) is list and all(type(t) is int and 0 <= t < TOK.vocab_size for t in ids)
    assert ids[0] == TOK.START and ids[1] in (TOK.DRUMS_OFF, TOK.DRUMS_ON) and ids[-1] == TOK.END
    assert ids.count(TOK.START) == ids.count(TOK.END) == 1
    score = TOK.decode_score(ids)
    assert score.invalid_tokens == 0
    header = list(score.header.instruments)
    assert len(set(header)) == len(header)
    assert set(header) == {n.instrument for n in score.notes} - {DRUMS.index}
    assert score.header.drums == any(n.instrument == DRUMS.index for n in score.notes)


def encode_outcome(data: bytes) -> str:
    """'read' or 'refused: <reason class>'; anything but a MidiReadError propagates."""
    try:
        ids = TOK.encode(data)
    except MidiReadError as err:
        assert str(err).strip(), "a refusal without a reason"
        return f"refused: {reason_class(err)}"
    check_ids(ids)
    return "read"


def decode_outcome(ids) -> str:
    """Decoding never raises, and the file it makes reads back to the decoded notes."""
    score = TOK.decode_score(ids)
    assert score.invalid_tokens >= 0
    data = to_bytes(TOK.decode(ids))
    assert sorted(TOK.read(data).notes) == sorted(score.notes)
    again = TOK.encode(data)
    assert again == TOK.encode_notes(score.notes)
    check_ids(again)
    return ("notes" if score.notes else "no notes") + (
        ", invalid tokens skipped" if score.invalid_tokens else ", no invalid token")


# --- the files to mutate -----------------------------------------------------------------


def running_status_file() -> bytes:
    """A type 0 file written as many real ones are (mido never does): a status byte once per
    run of events, velocity-0 note-offs, a sysex, text and tempo metas."""
    body = b"\x00\xff\x03\x05piano\x00\xff\x51\x03\x07\xa1\x20\x00\xf0\x03\x7e\x09\xf7"
    body += b"\x00\xc0\x00\x00\xc1\x21"
    for status, low in ((0x90, 60), (0x91, 36), (0x99, 35)):
        for i in range(16):
            pitch = low + i % 7
            running = bytes([status]) if i == 0 else b""
            body += b"\x00" + running + bytes([pitch, 100]) + vlq(60) + bytes([pitch, 0])
    return smf(mtrk(body + END_OF_TRACK), fmt=0)


FIXTURES = {
    "band": to_bytes(band(1, bars=2)),
    "band-type-0": to_bytes(merged(band(2, bars=1))),
    "no-drums": to_bytes(band(3, bars=1, drums=False)),
    "running-status": running_status_file(),
}


def small_corpus_files(count: int) -> dict[str, bytes]:
    """Up to `count` corpus files of at most 32 KB (fuzzing speed), or none without a corpus."""
    files = [p for p in corpus_files(16, seed=3) if p.stat().st_size <= 32 * 1024]
    return {f"{p.parent.name}/{p.name}": p.read_bytes() for p in files[:count]}


# --- running the cases -------------------------------------------------------------------


def fuzz_files(tally: Tally, bases: dict[str, bytes], numbers: range, *, mutations=MUTATIONS):
    names = sorted(bases)
    for mutation in mutations:
        offset = list(MUTATIONS).index(mutation)  # each kind starts at another base
        for number in numbers:
            base = names[(number + offset) % len(names)]
            data = mutate(mutation, base, bases[base], number)
            tally.run(mutation, f"mutate({mutation!r}, {base!r}, ..., {number})",
                      lambda data=data: encode_outcome(data),  # every base traced in turn
                      traced=number // len(names) % TRACE_EVERY == 0)


def fuzz_ids(tally: Tally, numbers: range, *, kinds=TOKEN_KINDS) -> None:
    for kind in kinds:
        for number in numbers:
            ids = random_ids(kind, number)
            tally.run(f"random token ids ({kind}), decoded and read back",
                      f"random_ids({kind!r}, {number})", lambda ids=ids: decode_outcome(ids),
                      traced=number % TRACE_EVERY == 0)


# --- fast: the default suite -------------------------------------------------------------


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_mutated_files_are_read_or_refused_with_a_reason(mutation):
    tally = Tally()
    fuzz_files(tally, FIXTURES, range(24), mutations=[mutation])
    tally.assert_clean()
    assert sum(tally.outcomes[mutation].values()) == 24


@pytest.mark.corpus
@pytest.mark.slow  # ~1.6 s; CI runs it
def test_mutated_corpus_files_are_read_or_refused_with_a_reason(corpus_dir):
    tally = Tally()
    fuzz_files(tally, small_corpus_files(16), range(5))
    tally.assert_clean()


@pytest.mark.parametrize("kind", TOKEN_KINDS)
def test_random_token_ids_decode_to_files_that_read_back(kind):
    tally = Tally()
    fuzz_ids(tally, range(20), kinds=[kind])
    tally.assert_clean()


# --- banger preprocess over a folder of broken files -------------------------------------


def mutated_folder(folder: Path, bases: dict[str, bytes], per_mutation: int) -> dict[str, bytes]:
    """Valid files (named to sort first, so none is a 'duplicate') and mutated ones."""
    files = {f"a-valid-{i}.mid": to_bytes(band(40 + i, bars=2)) for i in range(4)}
    names = sorted(bases)
    for m, mutation in enumerate(MUTATIONS):
        for number in range(per_mutation):
            base = names[number % len(names)]
            files[f"m{m}-{number:03d}.mid"] = mutate(mutation, base, bases[base], 500 + number)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def check_preprocessed(out: Path, files: dict[str, bytes]) -> tuple[set, dict]:
    """Every file is kept or listed in skipped.csv with a reason; the valid ones are kept;
    an unreadable one is refused by the reader with that very reason."""
    kept = {Path(json.loads(line)["path"]).name for split in SPLITS
            for line in (out / f"{split}.pieces.jsonl").read_text(encoding="utf-8").splitlines()}
    with open(out / "skipped.csv", newline="", encoding="utf-8") as handle:
        skipped = {Path(row["path"]).name: row["reason"] for row in csv.DictReader(handle)}
    assert kept | set(skipped) == set(files) and not kept & set(skipped)
    assert {name for name in files if name.startswith("a-valid-")} <= kept
    assert all(reason.strip() for reason in skipped.values())
    for name, reason in skipped.items():
        if reason.startswith("unreadable"):
            with pytest.raises(MidiReadError) as caught:
                TOK.read(files[name])
            assert reason == f"unreadable: {caught.value}"
    return kept, skipped


def test_preprocess_keeps_valid_files_and_gives_a_reason_for_every_broken_one(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    files = mutated_folder(inputs, FIXTURES, per_mutation=6)
    with watchdog(60):
        report = preprocess([inputs], tmp_path / "data", workers=1)
    kept, skipped = check_preprocessed(tmp_path / "data", files)
    assert report.found == len(files) == 64
    assert sum(report.kept.values()) == len(kept)
    assert sum(report.skipped.values()) == len(skipped) > 30


# --- the bounds the fuzzing found missing ------------------------------------------------


def events_file(note_ons: int, *, programs: int = 1, tempos: int = 1) -> bytes:
    """Note-ons split over two tracks, after some tempo and program changes."""
    def ons(count: int, low: int) -> bytes:
        return b"".join(b"\x00\x90" + bytes([low + i, 100]) for i in range(count))

    first = b"\x00\xff\x51\x03\x07\xa1\x20" * tempos + b"\x00\xc0\x00" * programs
    return smf(mtrk(first + ons(note_ons // 2, 0) + END_OF_TRACK),
               mtrk(ons(note_ons - note_ons // 2, 64) + END_OF_TRACK))


def test_more_events_than_the_cap_are_refused_as_they_are_read(monkeypatch):
    """Note-ons, program and tempo changes of all tracks count; one past the cap is refused
    while parsing, before the memory they need (~400 bytes each) is taken."""
    import bangercli.midi.midifile

    monkeypatch.setattr(bangercli.midi.midifile, "MAX_EVENTS", 40)
    assert len(TOK.read(events_file(38)).notes) == 38
    for data in (events_file(39), events_file(38, programs=2), events_file(38, tempos=2)):
        with pytest.raises(MidiReadError, match="too many events: more than 40 note-ons"):
            TOK.read(data)


def test_more_tracks_than_a_header_can_count_are_refused_quickly():
    note = mtrk(b"\x00\x90\x3c\x64\x60\x80\x3c\x00" + END_OF_TRACK)
    started = time.perf_counter()
    assert len(TOK.read(smf(note, *[mtrk(b"")] * 0xFFFE, ntracks=0xFFFF)).notes) == 1
    with pytest.raises(MidiReadError, match="too many tracks: more than 65,535"):
        TOK.read(smf(note, *[mtrk(b"")] * 0xFFFF, ntracks=0xFFFF))
    assert time.perf_counter() - started < 5.0


def test_notes_later_than_the_reader_accepts_are_dropped_when_decoding():
    """Past MAX_QUARTERS delta times outgrow a MIDI file's 4 bytes: such a note is counted
    as an invalid token, and what is decoded still reads back."""
    latest = MAX_QUARTERS * TOK.config.steps_per_quarter  # 1,048,576 steps: 4112 x 255 + 16
    note = [TOK.durvel_token(4, 3), TOK.note_token(0, 60)]
    ids = [TOK.START, TOK.DRUMS_OFF, *[TOK.time_token(255)] * 4112, TOK.time_token(16), *note,
           TOK.time_token(1), *note, TOK.END]
    score = TOK.decode_score(ids)
    assert [n.start for n in score.notes] == [latest] and score.invalid_tokens == 1
    assert TOK.read(to_bytes(TOK.decode(ids))).notes == score.notes


# --- long: pytest -m fuzz ----------------------------------------------------------------

LONG_BASES = 12  # corpus files (when present) beside the fixtures


def report(capsys, tally: Tally) -> None:
    with capsys.disabled():
        print("\n| What was tried | How often | What happened |\n|---|---|---|")
        print("\n".join(tally.rows()))


@pytest.mark.fuzz
def test_long_fuzz_of_mutated_files(capsys):
    """10,150 mutated files from the fixtures and small corpus files: 1,100 of each kind
    but thousands of tracks, 250 of those (each one is as slow as 30 others)."""
    tally = Tally()
    bases = {**FIXTURES, **small_corpus_files(LONG_BASES)}
    many = "thousands of tracks"
    fuzz_files(tally, bases, range(1000, 2100), mutations=[m for m in MUTATIONS if m != many])
    fuzz_files(tally, bases, range(1000, 1250), mutations=[many])
    report(capsys, tally)
    tally.assert_clean()
    assert sum(sum(outcomes.values()) for outcomes in tally.outcomes.values()) == 10_150


@pytest.mark.fuzz
def test_long_fuzz_of_random_token_ids(capsys):
    tally = Tally()
    fuzz_ids(tally, range(1000, 1250))
    report(capsys, tally)
    tally.assert_clean()


@pytest.mark.fuzz
def test_long_fuzz_of_the_preprocess_command(tmp_path, capsys):
    """The real command, in a subprocess with two workers, over 400 broken files."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    files = mutated_folder(inputs, {**FIXTURES, **small_corpus_files(LONG_BASES)}, 40)
    out = tmp_path / "data"
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "bangercli", "preprocess", str(inputs), "--out",
                          str(out), "--workers", "2", "--quiet"],
                         capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - started
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"{out}\n"
    kept, skipped = check_preprocessed(out, files)
    reasons = Counter(reason.split(":")[0] for reason in skipped.values())
    with capsys.disabled():
        print(f"\n| banger preprocess --workers 2, one run | {len(files)} files "
              f"({len(files) - 4} mutated) | exit 0 in {seconds:.1f} s; {len(kept)} kept (all 4 "
              f"valid); {len(skipped)} in skipped.csv, each with a reason: "
              + ", ".join(f"{n} {r}" for r, n in reasons.most_common()) + " |")


def worst_cases() -> dict[str, bytes]:
    """The largest inputs that each limit allows, 1.5 to 16 MB."""
    big = MAX_FILE_BYTES - 64
    programs = b"".join(bytes([0, 0xC0 | c, c * 8]) for c in range(16))
    run_of_128 = b"".join(bytes([0, pitch, 100]) for pitch in range(1, 128))
    distinct = b"".join(  # 2,048 keys a step, never ended: the costliest notes to read
        bytes([int(block % 16 == 0), 0x90 | block % 16, 0, 100]) + run_of_128
        for block in range(4095)
    )
    return {
        "16 MB of running-status note-ons": smf(
            mtrk(b"\x00\x90\x3c\x64" + b"\x00\x3c\x64" * (big // 3) + END_OF_TRACK), fmt=0),
        "524,160 note-ons on distinct keys, just under the cap (1.5 MB)": smf(
            mtrk(programs + distinct + END_OF_TRACK), fmt=0, division=8),
        "2 million empty tracks (16 MB)": smf(*[mtrk(b"")] * (big // 8), ntracks=0xFFFF),
        "16 MB of real-time bytes": smf(mtrk(b"\x00\xf8" * (big // 2)), fmt=0),
        "a file one byte over the 16 MB limit": b"MThd" + bytes(MAX_FILE_BYTES - 3),
    }


CHILD = """
import json, re, sys, time
from bangercli.errors import MidiReadError
from bangercli.midi.tokenizer import Tokenizer
started = time.perf_counter()
try:
    outcome = f"read: {len(Tokenizer().encode(sys.argv[1])):,} ids"
except MidiReadError as err:
    outcome = f"refused: {err}"
seconds = time.perf_counter() - started
with open("/proc/self/status") as status:  # VmHWM: this process's peak, not its parent's
    peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", status.read()).group(1)) * 1024
print(json.dumps([outcome, seconds, peak]))
"""


@pytest.mark.fuzz
def test_worst_case_files_are_read_or_refused_within_bounds(tmp_path, capsys):
    """Each in a fresh process, so its peak resident memory is its own: under 15 s and
    300 MB (the costliest, just under the event cap, takes ~5 s and ~230 MB here)."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("measures peak memory through Linux's /proc/self/status")
    rows = []
    for name, data in worst_cases().items():
        path = tmp_path / "worst.mid"
        path.write_bytes(data)
        run = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        outcome, seconds, rss = json.loads(run.stdout)
        rows.append(f"| {name} | 1 | {outcome} in {seconds:.1f} s, {rss / 2**20:.0f} MB "
                    "resident at most (the whole process, Python included) |")
        assert seconds < 15 and rss < 300 * 2**20, rows[-1]
    with capsys.disabled():
        print("\n" + "\n".join(rows))
