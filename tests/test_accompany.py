"""Playing along (--add, --rewrite) and what every prompt keeps: the guarantees, checked on an
untrained model and on stand-in decoders that try to break them (skip the kept notes, play
other instruments, never play the added part)."""

from __future__ import annotations

import io

import mido
import pytest
import torch

from bangercli.api import Banger
from bangercli.errors import UsageError
from bangercli.generation.generate import generate
from bangercli.generation.request import Request
from bangercli.midi.instruments import DRUMS, instrument_named
from bangercli.midi.tokenizer import Tokenizer
from bangercli.model.network import PRESETS, build_model

BASS, GUITAR, PIANO = (instrument_named(n).index for n in ("bass", "guitar", "piano"))
SEEDS = range(2)


@pytest.fixture(scope="module")
def banger() -> Banger:
    torch.manual_seed(0)
    return Banger(build_model(PRESETS["tiny"]), Tokenizer(), PRESETS["tiny"])


def riff(*, bars: int = 4, tpb: int = 96, meter: tuple[int, int] = (4, 4),
         piano: bool = False) -> bytes:
    """A distortion-guitar riff (program 30) with a tempo change, off-grid onsets and odd
    velocities, on channel 2; optionally a piano part on channel 5."""
    midi = mido.MidiFile(type=1, ticks_per_beat=tpb)
    conductor = mido.MidiTrack([
        mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(97), time=0),
        mido.MetaMessage("time_signature", numerator=meter[0], denominator=meter[1], time=0),
        mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(103), time=tpb * 6),
    ])
    midi.tracks.append(conductor)
    beats = bars * meter[0] * 4 // meter[1]
    for channel, program, pitches, step in ((2, 30, (40, 47, 52), tpb // 2),
                                            (5, 0, (72, 76), tpb) if piano else (None,) * 4):
        if channel is None:
            continue
        track = mido.MidiTrack([mido.Message("program_change", channel=channel, program=program)])
        events = []
        for number, tick in enumerate(range(0, beats * tpb, step)):
            pitch = pitches[number % len(pitches)]
            on = tick + (3 if number % 3 == 1 else 0)  # a little off the grid
            events += [(on, 1, pitch, 37 + 11 * (number % 7)), (on + step - 5, 0, pitch, 0)]
        now = 0
        for tick, is_on, pitch, velocity in sorted(events):
            kind = "note_on" if is_on else "note_off"
            track.append(mido.Message(kind, channel=channel, note=pitch, velocity=velocity,
                                      time=tick - now))
            now = tick
        midi.tracks.append(track)
    buffer = io.BytesIO()
    midi.save(file=buffer)
    return buffer.getvalue()


def events(midi: mido.MidiFile, *, track: int) -> list[tuple[int, str]]:
    """(absolute tick, message without time) of one track, end of track left out."""
    tick, result = 0, []
    for message in midi.tracks[track]:
        tick += message.time
        if message.type != "end_of_track":
            result.append((tick, str(message.copy(time=0))))
    return result


def note_events(midi: mido.MidiFile, *, track: int) -> list[tuple[int, str]]:
    return [e for e in events(midi, track=track) if "note_" in e[1]]


def grid_notes(banger, midi: mido.MidiFile):
    return banger.tokenizer.read(midi).notes


# --- --add ---------------------------------------------------------------------------------


def test_add_keeps_every_prompt_event_and_adds_only_the_new_parts(banger):
    prompt = riff(piano=True)
    original = mido.MidiFile(file=io.BytesIO(prompt))
    for seed in SEEDS:
        for piece in generate(banger, Request(prompt=prompt, add=("drums", "bass"),
                                              variants=2, seed=seed)):
            midi = piece.midi
            assert midi.ticks_per_beat == original.ticks_per_beat
            for number in range(len(original.tracks)):  # tempo map, meter, programs, notes
                assert events(midi, track=number) == events(original, track=number), seed
            new = midi.tracks[len(original.tracks):]
            assert [t.name for t in new] == ["bass (banger)", "drums (banger)"][:len(new)]
            played = {n.instrument for n in grid_notes(banger, midi)}
            assert played <= {GUITAR, PIANO, BASS, DRUMS.index}
            assert piece.bars == 4  # as long as the prompt
            assert max(n.start for n in piece.notes) < 4 * 32


def test_added_parts_play_in_every_four_bars_even_when_the_model_would_not(banger):
    """A stand-in decoder that hates the added parts: their NOTE tokens are 30 nats down, and
    it loves to jump to the next riff note. The parts still play in every 4-bar window."""
    tokenizer = banger.tokenizer
    unwanted = [BASS, DRUMS.index]

    def bias(logits):
        logits = logits.copy()
        for instrument in unwanted:
            start = tokenizer.note_token(instrument, 0)
            logits[:, start:start + 128] -= 30.0
        return logits

    prompt = riff(bars=12)
    with stand_in(banger, bias):
        pieces = generate(banger, Request(prompt=prompt, add=("bass", "drums"), variants=3,
                                          seed=5))
    for piece in pieces:
        for window in range(3):
            heard = {n.instrument for n in piece.notes if n.start // 128 == window}
            assert {BASS, DRUMS.index} <= heard, (window, heard)


def test_kept_notes_win_over_a_model_that_skips_or_plays_anything(banger):
    """Two stand-ins: one that always wants the longest TIME (skipping over riff notes), one
    that wants notes of every other instrument. Every riff note is still there, once, and
    nothing but the added part is new."""
    tokenizer = banger.tokenizer

    def skipper(logits):
        logits = logits.copy()
        logits[:, tokenizer.time_token(tokenizer.config.max_shift)] += 50.0
        logits[:, tokenizer.time_token(31)] += 40.0
        return logits

    def intruder(logits):
        logits = logits.copy()
        logits[:, tokenizer.note_offset:] += 20.0
        logits[:, tokenizer.note_token(PIANO, 0):tokenizer.note_token(PIANO, 128)] += 20.0
        return logits

    prompt = riff()
    original = mido.MidiFile(file=io.BytesIO(prompt))
    kept = sorted(grid_notes(banger, original))
    for bias in (skipper, intruder):
        with stand_in(banger, bias):
            pieces = generate(banger, Request(prompt=prompt, add=("strings",), variants=2,
                                              seed=1))
        for piece in pieces:
            assert note_events(piece.midi, track=1) == note_events(original, track=1)
            guitar = sorted(n for n in piece.notes if n.instrument == GUITAR)
            assert guitar == kept, bias.__name__
            assert {n.instrument for n in piece.notes} == {GUITAR, instrument_named("strings").index}


def test_add_with_bars_continues_with_the_whole_band(banger):
    prompt = riff(bars=2)
    for piece in generate(banger, Request(prompt=prompt, add=("bass",), bars=2, seed=2)):
        assert piece.bars == 4
        later = {n.instrument for n in piece.notes if n.start >= 64}
        assert later <= {GUITAR, BASS}
        assert {GUITAR, BASS} <= later  # the band keeps playing after the prompt


# --- --rewrite -----------------------------------------------------------------------------


def test_rewrite_changes_only_the_chosen_parts_inside_the_chosen_bars(banger):
    prompt = riff(piano=True)
    original = mido.MidiFile(file=io.BytesIO(prompt))
    before = grid_notes(banger, original)
    for seed in SEEDS:
        piece = generate(banger, Request(prompt=prompt, rewrite=(2, 3), instruments=("guitar",),
                                         seed=seed))[0]
        midi = piece.midi
        # outside bars 2-3, and every piano note: the original events, untouched
        guitar_kept = [e for e in note_events(original, track=1)
                       if not 32 <= _step_of_on(e, original) < 96]
        assert _ons(note_events(midi, track=1)) == _ons(guitar_kept), seed
        assert note_events(midi, track=2) == note_events(original, track=2)
        assert events(midi, track=0) == events(original, track=0)
        new = [n for n in grid_notes(banger, midi) if n not in before]
        assert new and all(32 <= n.start < 96 and n.instrument == GUITAR for n in new)
        assert piece.bars == 4


def _step_of_on(event, midi) -> int:
    tick, text = event
    return (tick * 16 + midi.ticks_per_beat) // (2 * midi.ticks_per_beat)


def _ons(note_events_):
    return [e for e in note_events_ if "note_on" in e[1] and "velocity=0" not in e[1]]


def test_rewrite_defaults_to_the_parts_playing_there(banger):
    prompt = riff(piano=True)
    piece = generate(banger, Request(prompt=prompt, rewrite=(1, 1), seed=3))[0]
    new_tracks = [t.name for t in piece.midi.tracks[3:]]
    assert set(new_tracks) <= {"guitar (banger)", "piano (banger)"} and new_tracks


# --- every prompt: its own events are kept -------------------------------------------------


def test_a_continued_prompt_keeps_its_tempo_map_programs_and_timing(banger):
    prompt = riff()
    original = mido.MidiFile(file=io.BytesIO(prompt))
    piece = generate(banger, Request(prompt=prompt, bars=2, seed=4))[0]
    assert events(piece.midi, track=0) == events(original, track=0)
    assert events(piece.midi, track=1) == events(original, track=1)
    assert piece.bars == 6


def test_prompt_bars_are_the_prompts_own_bars_and_a_longer_request_says_so(banger):
    waltz = riff(bars=6, meter=(3, 4))
    piece = generate(banger, Request(prompt=waltz, prompt_bars=2, bars=1, seed=1))[0]
    kept = [n for n in banger.tokenizer.read(waltz).notes if n.start < 2 * 24]
    assert [n for n in piece.notes if n.start < 48] == kept  # two 3/4 bars: 48 grid steps
    assert any("3/4" in w for w in piece.warnings)
    short = generate(banger, Request(prompt=riff(bars=2), prompt_bars=5, bars=1, seed=1))[0]
    assert any("--prompt-bars 5" in w and "2 bars" in w for w in short.warnings)


def test_only_says_which_parts_of_the_prompt_it_left_out(banger):
    piece = generate(banger, Request(prompt=riff(piano=True), instruments=("bass",), only=True,
                                     bars=1, seed=1))[0]
    assert any(w.startswith("--only") and "guitar" in w and "piano" in w for w in piece.warnings)
    assert {n.instrument for n in piece.notes} == {BASS}  # and bass does play (issue 11, 4)


# --- requests that make no sense -----------------------------------------------------------


@pytest.mark.parametrize("options, message", [
    (dict(add=("drums",)), "needs a --prompt"),
    (dict(rewrite="8-5", prompt=b"x"), "ends before it starts"),
    (dict(rewrite="0-2", prompt=b"x"), "counted from 1"),
    (dict(rewrite="a-b", prompt=b"x"), "bars like 5-8"),
    (dict(add=("drums",), rewrite=(1, 2), prompt=b"x"), "two different jobs"),
    (dict(add=("drums",), instruments=("bass",), prompt=b"x"), "--add"),
    (dict(add=("drums",), tokens=100, prompt=b"x"), "not --tokens"),
    (dict(add=("kazoo",), prompt=b"x"), "kazoo"),
    (dict(add=[3], prompt=b"x"), "instrument names"),
])
def test_bad_play_along_requests_are_usage_errors(options, message):
    with pytest.raises(UsageError, match=message):
        Request(**options)


def test_a_range_outside_the_prompt_and_contradicting_drums_are_refused(banger):
    with pytest.raises(UsageError, match="reaches past the prompt, which has 4 bars"):
        generate(banger, Request(prompt=riff(), rewrite=(3, 6)))
    drummed = generate(banger, Request(prompt=riff(), add=("drums",), seed=1))[0].midi
    buffer = io.BytesIO()
    drummed.save(file=buffer)
    with pytest.raises(UsageError, match="--no-drums"):
        generate(banger, Request(prompt=buffer.getvalue(), add=("bass",), drums=False))


def test_the_same_seed_gives_the_same_bytes(banger):
    def render(seed):
        buffer = io.BytesIO()
        generate(banger, Request(prompt=riff(bars=2), add=("bass",), seed=seed))[0].midi.save(
            file=buffer)
        return buffer.getvalue()

    assert render(7) == render(7) != render(8)


class stand_in:
    """Within the block, `banger`'s decoder returns its logits passed through `bias`."""

    def __init__(self, banger, bias):
        self.banger, self.bias = banger, bias

    def __enter__(self):
        real, bias = self.banger.decoder, self.bias

        class Biased:
            def __getattr__(self, name):
                return getattr(real, name)

            def prefill(self, *args):
                return bias(real.prefill(*args))

            def step(self, *args):
                return bias(real.step(*args))

        self.real = real
        self.banger._decoder = Biased()

    def __exit__(self, *exc):
        self.banger._decoder = self.real
