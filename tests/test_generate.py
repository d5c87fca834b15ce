"""`generate(banger, request)`, the Python API: seeded determinism, pieces that end exactly
on the bar line, prompts kept verbatim, --tokens and variants, generation past the model's
window, and cached sampling that equals a plain greedy loop over the forward pass."""

from __future__ import annotations

import io
import re

import mido
import numpy as np
import pytest
import torch

import bangercli.generation.decoding as decoding_module
from bangercli.errors import UsageError
from bangercli.generation.generate import Piece, generate
from bangercli.generation.request import Request
from bangercli.midi.instruments import DRUMS, INSTRUMENTS
from bangercli.api import Banger
from bangercli.model.network import PRESETS, build_model
from bangercli.generation.sampling import Grammar
from bangercli.midi.tokenizer import Tokenizer
from midi_fixtures import band, save

CONFIG = PRESETS["tiny"]
STEPS_PER_BAR = 32


@pytest.fixture(scope="module")
def banger() -> Banger:
    torch.manual_seed(0)
    return Banger(build_model(CONFIG), Tokenizer(), CONFIG)


def midi_bytes(piece: Piece) -> bytes:
    buffer = io.BytesIO()
    piece.midi.save(file=buffer)
    return buffer.getvalue()


def bar_seconds(bpm: float) -> float:
    """One 4/4 bar at the tempo a MIDI file can store (whole microseconds per beat)."""
    return 4 * mido.bpm2tempo(bpm) / 1e6


def assert_grammatical(banger: Banger, piece: Piece) -> None:
    assert banger.tokenizer.decode_score(piece.ids).invalid_tokens == 0


# --- determinism -------------------------------------------------------------------------


def test_same_seed_same_pieces_other_seed_other_pieces(banger):
    request = Request(instruments=("piano", "bass"), drums=True, bars=16, variants=2, seed=7)
    first, again = generate(banger, request), generate(banger, request)
    assert all(piece.notes for piece in first)
    assert [p.ids for p in first] == [p.ids for p in again]
    assert [midi_bytes(p) for p in first] == [midi_bytes(p) for p in again]
    assert first[0].ids != first[1].ids  # the variants of one batch differ
    other = generate(banger, Request(instruments=("piano", "bass"), drums=True, bars=16,
                                     variants=2, seed=8))
    assert [p.ids for p in other] != [p.ids for p in first]
    assert [midi_bytes(p) for p in other] != [midi_bytes(p) for p in first]
    assert all(p.seed == 7 for p in first)


def test_a_reused_model_gives_the_same_pieces_as_a_fresh_one(banger):
    """The cached decoder built on the first call is reused, and reuse changes nothing."""
    torch.manual_seed(0)
    fresh = Banger(build_model(CONFIG), Tokenizer(), CONFIG)
    request = Request(drums=False, bars=5, seed=3)
    assert generate(fresh, request)[0].ids == generate(banger, request)[0].ids


def test_a_saved_and_loaded_model_gives_the_same_pieces(banger, tmp_path):
    from bangercli.api import load_model
    from bangercli.model.checkpoint import save_checkpoint

    path = save_checkpoint(tmp_path / "tiny.safetensors", banger.model, config=CONFIG,
                           tokenizer_config=banger.tokenizer.config)
    request = Request(instruments=("strings",), bars=6, variants=2, seed=5)
    loaded = load_model(path)
    assert [p.ids for p in generate(loaded, request)] == [p.ids for p in generate(banger, request)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_model_moved_to_the_gpu_still_generates_the_same_pieces(banger):
    torch.manual_seed(0)
    on_gpu = Banger(build_model(CONFIG), Tokenizer(), CONFIG).to("cuda")
    request = Request(bars=None, tokens=200, variants=2, seed=1)
    assert [p.ids for p in generate(on_gpu, request)] == [p.ids for p in generate(banger, request)]


# --- length ------------------------------------------------------------------------------


@pytest.mark.parametrize("bars, bpm", [(1, 120.0), (3, 97.0), (8, 140.0)])
def test_pieces_end_exactly_on_the_bar_line(banger, bars, bpm):
    limit = bars * STEPS_PER_BAR
    notes = 0
    for seed in range(4):
        for piece in generate(banger, Request(bars=bars, bpm=bpm, variants=2, seed=seed)):
            assert_grammatical(banger, piece)
            assert piece.bars == bars and piece.bpm == bpm
            assert all(n.start < limit and n.start + n.duration <= limit for n in piece.notes)
            expected = bars * bar_seconds(bpm)
            assert piece.seconds == pytest.approx(bars * 4 * 60 / bpm, abs=1e-9)
            assert abs(piece.midi.length - expected) < 1e-6
            written = mido.MidiFile(file=io.BytesIO(midi_bytes(piece)))
            assert abs(written.length - expected) < 1e-6
            conductor_end = sum(m.time for m in written.tracks[0])
            assert conductor_end == bars * 4 * written.ticks_per_beat  # end_of_track: bar line
            notes += len(piece.notes)
    assert notes > 0


def test_notes_ringing_past_the_end_are_cut_on_the_bar_line(banger, monkeypatch):
    """A model that always asks for the longest, earliest notes: every note still ends by
    the last bar line, and the file is still exactly that long."""
    tokenizer = banger.tokenizer
    favourites = {tokenizer.time_token(40): 30.0, tokenizer.durvel_token(128, 5): 30.0}
    monkeypatch.setattr(banger, "_decoder", EagerDecoder(favourites))
    piece = generate(banger, Request(instruments=("organ",), drums=False, bars=2, seed=0))[0]
    assert [(n.start, n.duration) for n in piece.notes] == [(40, 24)]
    assert abs(piece.midi.length - 2 * bar_seconds(120.0)) < 1e-6


def test_a_model_stuck_on_one_onset_still_finishes(banger, monkeypatch):
    """A model that only ever wants another note at the same onset (greedy decoding can get
    stuck like this): after a full chord, time is made to move on, so --bars ends."""
    tokenizer = banger.tokenizer
    favourites = {tokenizer.time_token(0): 30.0, tokenizer.durvel_token(8, 4): 30.0}
    monkeypatch.setattr(banger, "_decoder", EagerDecoder(favourites))
    piece = generate(banger, Request(instruments=("piano",), only=True, drums=False, bars=2,
                                     seed=0, top_k=1))[0]
    assert_grammatical(banger, piece)
    chord = 3 * decoding_module.MAX_CHORD  # TIME(0) DURVEL NOTE, again and again
    body = piece.ids[3:]  # after START, DRUMS_OFF, INSTRUMENT(piano)
    assert body[:chord:3] == [tokenizer.time_token(0)] * decoding_module.MAX_CHORD
    assert tokenizer.kind(body[chord]) == "time" and body[chord] != tokenizer.time_token(0)


# --- prompts -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prompt")
    return save(band(5, bars=4, drums=True, bpm=100.0), folder / "band.mid")


@pytest.mark.parametrize("kept_bars", [1, 2])
def test_the_prompt_is_kept_verbatim_and_nothing_new_starts_inside_it(banger, prompt_file,
                                                                      kept_bars):
    start = kept_bars * STEPS_PER_BAR
    prompt_notes = [n for n in banger.tokenizer.read(prompt_file).notes if n.start < start]
    assert max(n.start for n in prompt_notes) < start - 1  # generation starts mid-bar
    for seed in range(3):
        request = Request(prompt=prompt_file, prompt_bars=kept_bars, bars=2, variants=2, seed=seed)
        for piece in generate(banger, request):
            assert_grammatical(banger, piece)
            assert piece.bpm == 100.0 and piece.bars == kept_bars + 2
            assert [n for n in piece.notes if n.start < start] == prompt_notes
            reread = banger.tokenizer.read(midi_bytes(piece)).notes
            assert [n for n in reread if n.start < start] == prompt_notes
            assert abs(piece.midi.length - (kept_bars + 2) * bar_seconds(100.0)) < 1e-6


def test_an_eager_model_cannot_start_a_note_inside_the_prompt(banger, prompt_file, monkeypatch):
    """A model that always wants the next note one step later: right after a prompt whose
    last kept note is 4 steps before the bar line, the first new note still waits for it."""
    tokenizer = banger.tokenizer
    favourites = {tokenizer.time_token(1): 30.0, tokenizer.time_token(4): 10.0,
                  tokenizer.durvel_token(2, 4): 30.0}
    monkeypatch.setattr(banger, "_decoder", EagerDecoder(favourites))
    prompt_notes = [n for n in tokenizer.read(prompt_file).notes if n.start < STEPS_PER_BAR]
    for piece in generate(banger, Request(prompt=prompt_file, prompt_bars=1, bars=1, seed=0,
                                          variants=2)):
        assert_grammatical(banger, piece)
        new = [n for n in piece.notes if n not in prompt_notes]
        assert new and min(n.start for n in new) == STEPS_PER_BAR
        assert [n for n in piece.notes if n.start < STEPS_PER_BAR] == prompt_notes


def test_a_prompt_with_drums_off_drops_its_drums(banger, prompt_file):
    piece = generate(banger, Request(prompt=prompt_file, prompt_bars=1, drums=False, bars=1))[0]
    assert not piece.drums and all(n.instrument != DRUMS.index for n in piece.notes)
    assert piece.ids[1] == Tokenizer.DRUMS_OFF


# --- --tokens, variants, long generations ------------------------------------------------


def test_tokens_mode_writes_that_many_tokens_and_ends_on_a_bar_line(banger):
    pieces = generate(banger, Request(drums=True, instruments=("guitar",), bars=None, tokens=50,
                                      variants=3, seed=4))
    assert len(pieces) == 3
    for piece in pieces:
        assert_grammatical(banger, piece)
        generated = len(piece.ids) - 3  # START, DRUMS_ON, INSTRUMENT(guitar)
        assert generated in (50, 51)  # one more only to finish a note cut short
        last = max(n.start for n in piece.notes)
        assert piece.bars == last // STEPS_PER_BAR + 1
        assert abs(piece.midi.length - piece.bars * bar_seconds(120.0)) < 1e-6


def test_tokens_past_the_window_rebuild_the_context_and_stay_grammatical(banger):
    pieces = generate(banger, Request(bars=None, tokens=400, variants=2, seed=2))
    for piece in pieces:
        assert len(piece.ids) - 2 in (400, 401)  # after START and the drums flag the model chose
        assert_grammatical(banger, piece)
        assert len(piece.notes) >= 100
    assert pieces[0].ids != pieces[1].ids


def test_many_bars_past_the_window_stay_grammatical_and_exact(banger):
    bars = 200
    progress: list[tuple[int, int]] = []
    request = Request(instruments=("piano",), drums=True, bars=bars, variants=2, seed=1)
    pieces = generate(banger, request, progress=lambda done, total: progress.append((done, total)))
    assert max(len(p.ids) for p in pieces) > CONFIG.seq_len  # the context was rebuilt
    assert progress and {total for _, total in progress} == {bars * STEPS_PER_BAR}
    done = [d for d, _ in progress]
    assert done == sorted(done) and done[-1] <= bars * STEPS_PER_BAR
    for piece in pieces:
        assert_grammatical(banger, piece)
        assert all(n.start + n.duration <= bars * STEPS_PER_BAR for n in piece.notes)
        assert abs(piece.midi.length - bars * bar_seconds(120.0)) < 1e-6


def test_rows_that_end_leave_the_decoder_and_the_others_draw_the_same(banger, monkeypatch):
    """A batch whose rows end at different times: each row that ends leaves the decoder's
    cache (later steps work out fewer rows), also past the window, and every piece equals the
    one drawn when every row stays to the end."""
    class KeepEveryRow(decoding_module.Batch):
        def next_logits(self, token):
            done, self.done = self.done, [False] * len(self.done)  # no row looks finished
            try:
                super().next_logits(token)
            finally:
                self.done = done

    request = Request(instruments=("piano",), drums=True, bars=200, variants=4, seed=3)
    rows_per_step: list[int] = []
    step = type(banger.decoder).step

    def counting_step(decoder, token, columns=None):
        rows_per_step.append(len(token))
        return step(decoder, token, columns)

    monkeypatch.setattr(type(banger.decoder), "step", counting_step)
    shrinking = generate(banger, request)
    lengths = sorted(len(piece.ids) for piece in shrinking)
    assert lengths[0] < lengths[-1] and lengths[-1] > CONFIG.seq_len  # rows end apart
    assert rows_per_step[0] == 4 and rows_per_step[-1] == 1
    assert rows_per_step == sorted(rows_per_step, reverse=True)
    rows_per_step.clear()
    monkeypatch.setattr(decoding_module, "Batch", KeepEveryRow)
    kept = generate(banger, request)
    assert set(rows_per_step) == {4}
    assert [piece.ids for piece in kept] == [piece.ids for piece in shrinking]


# --- cached sampling equals the plain forward pass ---------------------------------------


def test_near_greedy_generation_equals_an_uncached_greedy_loop(banger):
    """With a vanishing temperature, `generate` (cached, batched, masked) must pick the
    argmax of the plain forward pass over the growing sequence under the same grammar."""
    request = Request(instruments=("piano", "bass"), drums=True, bars=None, tokens=70, seed=0,
                      temperature=1e-6, top_p=1.0, steer=0.0, echo=0.0)
    piece = generate(banger, request)[0]
    tokenizer = banger.tokenizer
    header = [Tokenizer.START, Tokenizer.DRUMS_ON, tokenizer.instrument_token(0),
              tokenizer.instrument_token(4)]
    assert piece.ids[:4] == header
    grammar = Grammar(tokenizer, drums=True)
    playing = {0, 4, DRUMS.index}  # the header's instruments, and any the model adds to it
    row = list(header)
    while len(row) < len(piece.ids):
        phase, _ = grammar.scan(row)
        allowed = torch.from_numpy(grammar.masks[phase].copy())
        for instrument in range(len(INSTRUMENTS)):
            if instrument in playing and instrument != DRUMS.index:
                allowed[tokenizer.instrument_token(instrument)] = False  # listed once
            elif instrument not in playing:
                first = tokenizer.note_token(instrument, 0)
                allowed[first:first + 128] = False  # only the band plays
        row.append(int(banger.logits(row)[-1].masked_fill(~allowed, float("-inf")).argmax()))
        if tokenizer.kind(row[-1]) == "instrument":
            playing.add(row[-1] - tokenizer.instrument_offset)
    assert row == piece.ids
    assert len(set(row[4:])) > 10


# --- requests that cannot work -----------------------------------------------------------


@pytest.mark.parametrize("options, message", [
    (dict(instruments=("kazoo",)), "unknown instrument"),
    (dict(bars=0), "--bars"),
    (dict(bars=-2), "--bars"),
    (dict(tokens=0), "--tokens"),
    (dict(bars=8, tokens=100), "--bars and --tokens contradict"),
    (dict(variants=0), "--variants"),
    (dict(temperature=0.0), "--temperature"),
    (dict(temperature=float("nan")), "--temperature"),
    (dict(temperature=float("inf")), "--temperature must be a finite"),
    (dict(top_p=0.0), "--top-p"),
    (dict(top_p=1.5), "--top-p"),
    (dict(top_k=-1), "--top-k"),
    (dict(bpm=0.0), "--bpm"),
    (dict(prompt="x.mid", prompt_bars=0), "--prompt-bars"),
    (dict(prompt_bars=3, bars=1), "--prompt-bars needs a --prompt"),
    (dict(only=True), "--only"),
    (dict(instruments=("drums",), only=True, drums=False), "nothing to play"),
    (dict(seed=-1), "--seed"),
    (dict(seed=2**64), "--seed"),
    # types: the Python API refuses what the command line could never send
    (dict(drums="no"), "--drums must be True or False"),
    (dict(only="false"), "--only must be True or False"),
    (dict(bars=2.5), "--bars must be a whole number"),
    (dict(bars=True), "--bars must be a whole number"),
    (dict(tokens=True), "--tokens must be a whole number"),
    (dict(bars="8"), "--bars must be a whole number"),
    (dict(seed="7"), "--seed must be a whole number"),
    (dict(seed=None), "--seed must be a whole number"),
    (dict(variants=2.0), "--variants must be a whole number"),
    (dict(temperature="1"), "--temperature must be a number"),
    (dict(instruments=[1]), "instrument names are strings"),
    (dict(instruments=None), "instruments must be a list of names"),
    (dict(prompt=3), "--prompt must be a path"),
])
def test_impossible_requests_are_usage_errors(banger, options, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        Request(**options)
    with pytest.raises(UsageError, match=re.escape(message)):  # the same through the front door
        banger.generate(**options)


def test_the_front_door_takes_a_request_or_its_fields(banger):
    request = Request(instruments=("piano",), bars=2, seed=4)
    by_fields = banger.generate(instruments="piano", bars=2, seed=4)
    assert [p.ids for p in banger.generate(request)] == [p.ids for p in by_fields]
    assert Request().bars == 16 and Request(tokens=50).bars is None


def test_default_model_refuses_prompt_bars_without_a_prompt():
    from bangercli import load_model

    with pytest.raises(UsageError, match="--prompt-bars needs a --prompt"):
        load_model("default").generate(prompt_bars=3, bars=1)


def test_unreadable_and_empty_prompts_are_clear_errors(banger, tmp_path):
    from bangercli.errors import BangerError

    corrupt = tmp_path / "corrupt.mid"
    corrupt.write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x01\xe0MTrk\x00\x00\x10\x00\x00\x90")
    with pytest.raises(BangerError, match="truncated"):
        generate(banger, Request(prompt=corrupt))
    with pytest.raises(BangerError, match="no such file"):
        generate(banger, Request(prompt=tmp_path / "missing.mid"))
    empty = save(mido.MidiFile(tracks=[mido.MidiTrack()]), tmp_path / "empty.mid")
    with pytest.raises(UsageError, match="no notes"):
        generate(banger, Request(prompt=empty))


# --- a stand-in for the cached decoder ---------------------------------------------------


class EagerDecoder:
    """Quacks like `FastDecoder` but always returns the same logits: zeros except for
    `favourites`. An adversarial model that the masks must keep in line."""

    def __init__(self, favourites: dict[int, float]) -> None:
        self.logits = np.zeros(Tokenizer().vocab_size, dtype=np.float32)
        for token, value in favourites.items():
            self.logits[token] = value
        self.length = 0
        self.calls = 0

    def prefill(self, ids: np.ndarray, valid: np.ndarray, capacity: int) -> np.ndarray:
        self.length = ids.shape[1]
        return np.tile(self.logits, (ids.shape[0], 1))

    def step(self, token: np.ndarray, columns=None) -> np.ndarray:  # every column: allowed
        self.length += 1
        self.calls += 1
        if self.calls > 20_000:
            raise AssertionError("generation does not end")
        return np.tile(self.logits, (token.shape[0], 1))
