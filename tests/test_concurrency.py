"""Several `banger generate` processes writing into one folder at the same moment, and
memory that stays bounded under load (many variants, many files to preprocess).

Without --force a name that another run took is never overwritten: for each name exactly one
run wins, a run that loses any of its names exits with one `error:` line and leaves none of
its files, and every file in the folder holds exactly the bytes its winner reported (the same
seed regenerated in-process gives the same bytes), its WAV preview included where FluidSynth
and a soundfont are installed. With --force every run succeeds and every
final file is one run's complete MIDI, never a mix. No `.part` file is left in either case.

The processes run the real entry point (`python -c "... main()"`, what `python -m bangercli`
runs) with one change: `save_pieces` waits until every process has reached it. Without that,
process start-up spreads the runs over seconds and most collisions are caught by the early
"already exists" check; lined up, they race in the check-then-link window that matters.

Every process start costs seconds of imports, so the races are marked slow (CI runs them;
the default suite stays under a minute).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mido
import pytest
import soundfile

import bangercli.render.audio as audio_module
import bangercli.generation.generate as generate_module
import bangercli.generation.save as output_module
from bangercli.api import load_model
from bangercli.errors import BangerError, OutputExistsError
from bangercli.model.decoder import FastDecoder
from bangercli.generation.generate import generate
from bangercli.generation.request import Request
from bangercli.model.network import PRESETS
from bangercli.generation.save import save_pieces, stem_of
from midi_fixtures import band, save

CONFIG = PRESETS["tiny"]
BARS = 2
DEFAULT_NAME = "{lead}-{seed}-{n}"


def _soundfont() -> Path | None:
    """A soundfont that FluidSynth can play here, or None (the runs then write MIDI only)."""
    try:
        import fluidsynth  # noqa: F401

        return audio_module.find_soundfont()
    except (ImportError, OSError, BangerError):
        return None


SOUNDFONT = _soundfont()

# `banger generate ...` whose save_pieces first waits for all PARTIES processes (60 s at most).
LAUNCHER = """
import os, sys, time
import bangercli.generation.save as output
from bangercli.cli.app import main

real = output.save_pieces

def lined_up(*args, **kwargs):
    folder, parties = os.environ["LINE_UP"], int(os.environ["PARTIES"])
    open(os.path.join(folder, str(os.getpid())), "w").close()
    deadline = time.monotonic() + 60
    while len(os.listdir(folder)) < parties and time.monotonic() < deadline:
        time.sleep(0.01)
    return real(*args, **kwargs)

output.save_pieces = lined_up
main()
"""


@dataclass(frozen=True)
class Run:
    seed: int
    name: str = DEFAULT_NAME  # --name template
    variants: int = 3


@dataclass
class Outcome:
    run: Run
    code: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def expected(checkpoint):
    """File name -> MIDI bytes that a run writes, regenerated in-process with its seed."""
    banger = load_model(str(checkpoint))

    def files_of(run: Run) -> dict[str, bytes]:
        pieces = generate(banger, Request(bars=BARS, variants=run.variants, seed=run.seed))
        return {f"{stem_of(run.name, piece, n)}.mid": midi_bytes(piece)
                for n, piece in enumerate(pieces, 1)}

    return files_of


def midi_bytes(piece) -> bytes:
    buffer = io.BytesIO()
    piece.midi.save(file=buffer)
    return buffer.getvalue()


def run_together(runs: list[Run], out: Path, checkpoint: Path, tmp_path: Path, *,
                 options: tuple[str, ...] = ("--audio", "none")) -> list[Outcome]:
    """Start one process per run at once, all writing into `out`; wait for all of them."""
    line_up = tmp_path / f"line-up-{out.name}"
    line_up.mkdir()
    env = dict(os.environ, BANGER_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1",
               LINE_UP=str(line_up), PARTIES=str(len(runs)))
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, "generate", "--model", str(checkpoint),
             "--out", str(out), "--bars", str(BARS), "--seed", str(run.seed),
             "-n", str(run.variants), "--name", run.name, *options],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for run in runs
    ]
    try:
        results = [process.communicate(timeout=300) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    return [Outcome(run, process.returncode, stdout, stderr)
            for run, process, (stdout, stderr) in zip(runs, processes, results)]


def assert_clean_failure(outcome: Outcome) -> None:
    assert outcome.code != 0 and outcome.stdout == "", outcome
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), outcome.stderr
    assert "already exists" in lines[0] and "--force" in lines[0]


def assert_complete_midi(path: Path) -> None:
    assert abs(mido.MidiFile(path).length - BARS * 2.0) < 1e-6  # BARS bars at 120 bpm


# (runs, how many of them win): the groups of runs that race, all started together
SAME = ([Run(seed=7)] * 2, 1)  # identical seeds and names: exactly one run wins
DISTINCT = ([Run(seed=8), Run(seed=9)], 2)  # no shared name: both win
# take-1 ... take-6 against take-6 alone: the second usually wins, and the first must then
# remove the five files it wrote
OVERLAPPING = ([Run(seed=11, name="take-{n}", variants=6),
                Run(seed=6, name="take-{seed}", variants=1)], 1)


@pytest.mark.parametrize("groups", [
    pytest.param([SAME], id="two-runs", marks=pytest.mark.slow),  # the race itself, at the cost of two process starts
    pytest.param([SAME, DISTINCT, OVERLAPPING], id="six-runs", marks=pytest.mark.slow),
])
def test_runs_racing_for_names_never_clobber_each_other(checkpoint, expected, tmp_path, groups):
    out = tmp_path / "out"
    audio = ("--audio", "wav", "--soundfont", str(SOUNDFONT)) if SOUNDFONT else ("--audio", "none")
    outcomes = run_together([run for runs, _ in groups for run in runs], out, checkpoint,
                            tmp_path, options=(*audio, "--json"))

    reported: dict[str, bytes] = {}
    previews: list[Path] = []
    for outcome in outcomes:
        if outcome.code != 0:
            assert_clean_failure(outcome)
            continue
        assert outcome.stderr == "", outcome
        files = expected(outcome.run)
        records = [json.loads(line) for line in outcome.stdout.splitlines()]
        assert [record["midi"] for record in records] == [str(out / name) for name in files]
        assert not set(files) & set(reported), "two runs reported the same file"
        reported.update(files)
        if SOUNDFONT:
            previews += [Path(record["audio"]) for record in records]
    start = 0
    for runs, winners in groups:
        group = outcomes[start:start + len(runs)]
        assert [o.code == 0 for o in group].count(True) == winners, group
        start += len(runs)

    # no orphan from a losing run, no temporary file, every byte from the run that reported it
    assert sorted(p.name for p in out.iterdir()) == sorted([*reported, *(p.name for p in previews)])
    for name, data in reported.items():
        assert (out / name).read_bytes() == data, name
        assert_complete_midi(out / name)
    for preview in previews:
        duration = soundfile.info(preview).duration
        assert duration == pytest.approx(BARS * 2.0 + audio_module.TAIL_SECONDS, abs=1e-3)


@pytest.mark.slow  # four process starts
def test_with_force_every_file_is_one_runs_complete_midi(checkpoint, expected, tmp_path):
    # four seeds whose take-1 differ, so that a mix would show (the untrained model leaves
    # most 2-bar pieces empty, and empty pieces are the same bytes whatever the seed)
    runs, seen = [], set()
    for seed in range(20, 200):
        first = expected(Run(seed=seed, name="take-{n}"))["take-1.mid"]
        if first not in seen:
            seen.add(first)
            runs.append(Run(seed=seed, name="take-{n}"))
        if len(runs) == 4:
            break
    out = tmp_path / "out"
    outcomes = run_together(runs, out, checkpoint, tmp_path, options=("--audio", "none", "--force"))
    for outcome in outcomes:
        assert outcome.code == 0 and outcome.stderr == "", outcome
        assert outcome.stdout.splitlines() == [str(out / f"take-{n}.mid") for n in (1, 2, 3)]

    candidates = [expected(run) for run in runs]
    assert len({files["take-1.mid"] for files in candidates}) == len(runs)  # a mix would show
    assert sorted(p.name for p in out.iterdir()) == ["take-1.mid", "take-2.mid", "take-3.mid"]
    for name in ("take-1.mid", "take-2.mid", "take-3.mid"):
        assert (out / name).read_bytes() in [files[name] for files in candidates], name
        assert_complete_midi(out / name)


def test_a_run_that_loses_a_later_name_removes_the_files_it_wrote(checkpoint, tmp_path,
                                                                   monkeypatch):
    """The race above, made certain: a rival takes take-3 while this run writes take-1 and
    take-2. The run fails and leaves only the rival's file (its stdout named none)."""
    pieces = generate(load_model(str(checkpoint)), Request(bars=BARS, variants=3, seed=11))
    real_link = os.link

    def rival_takes_the_last(source, destination):
        if Path(destination).name == "take-3.mid":
            Path(destination).write_bytes(b"the rival's file")
        return real_link(source, destination)

    monkeypatch.setattr(output_module.os, "link", rival_takes_the_last)
    with pytest.raises(OutputExistsError, match="take-3.mid already exists"):
        save_pieces(pieces, tmp_path, template="take-{n}", audio=None, piano_roll=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["take-3.mid"]
    assert (tmp_path / "take-3.mid").read_bytes() == b"the rival's file"


# --- load: memory that does not grow with the request --------------------------------------


def test_many_variants_are_decoded_a_bounded_batch_at_a_time(checkpoint, monkeypatch):
    """More variants than MAX_BATCH run batch after batch on one generator: the decoder (whose
    KV cache grows with its batch) never holds more rows, the first batch is exactly what a
    smaller -n gives, and the progress bar runs once over all batches."""
    banger = load_model(str(checkpoint))
    monkeypatch.setattr(generate_module, "MAX_BATCH", 2)
    batches = []
    real_prefill = FastDecoder.prefill

    def counting_prefill(self, ids, valid, capacity):
        batches.append(len(ids))
        return real_prefill(self, ids, valid, capacity)

    monkeypatch.setattr(FastDecoder, "prefill", counting_prefill)
    calls = []
    request = Request(bars=None, tokens=70, variants=5, seed=3)
    five = generate(banger, request, progress=lambda done, total: calls.append((done, total)))
    assert len(five) == 5 and max(batches) == 2
    assert len({tuple(piece.ids) for piece in five}) == 5  # later batches draw new numbers
    two = generate(banger, Request(bars=None, tokens=70, variants=2, seed=3))
    assert [piece.ids for piece in five[:2]] == [piece.ids for piece in two]
    assert calls and {total for _, total in calls} == {3 * 70}  # 3 batches of 70 tokens
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


# `banger ARGS`, then its own peak resident size (kB) into $PEAK_FILE. Read from inside: the
# ru_maxrss of a child of this process would start at pytest's own size (the child's memory
# before exec counts towards it).
PEAK_LAUNCHER = """
import os
from bangercli.cli.app import main

try:
    main()
finally:
    with open("/proc/self/status") as status, open(os.environ["PEAK_FILE"], "w") as out:
        out.write(next(line.split()[1] for line in status if line.startswith("VmHWM")))
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_preprocess_memory_does_not_grow_with_the_number_of_files(tmp_path):
    """20 times the files (2.7 M tokens), about the same peak memory: results are streamed to
    the shards, not held. Holding every piece's ids until the end measured 2.4x here, streaming
    1.03x (bench/memory.py goes from 100 to 10,000 files)."""
    for seed in range(2000):
        save(band(seed, bars=32), tmp_path / "midi" / f"{seed // 1000}" / f"song{seed}.mid")

    def peak_mb(sources: list[Path], out: Path) -> float:
        peak = tmp_path / f"{out.name}.peak"
        env = dict(os.environ, BANGER_HOME=str(tmp_path / "home"), PEAK_FILE=str(peak))
        subprocess.run([sys.executable, "-c", PEAK_LAUNCHER, "preprocess", *map(str, sources),
                        "--out", str(out), "--workers", "1", "--quiet"],
                       stdout=subprocess.DEVNULL, env=env, check=True)
        return int(peak.read_text()) / 1024

    few = peak_mb(sorted((tmp_path / "midi" / "0").iterdir())[:100], tmp_path / "few")
    many = peak_mb([tmp_path / "midi"], tmp_path / "many")
    assert many < 1.5 * few, (few, many)
