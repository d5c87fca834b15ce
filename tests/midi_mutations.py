"""Broken MIDI files and token ids for the fuzz tests, from a seed: every mutation class of
the reliability issue (truncation, bit flips, huge lengths in headers and variable-length
quantities, wrong chunk sizes, running-status abuse, thousands of tracks, zero ticks per beat,
SMPTE time division, and all of them stacked), aimed at fields by a small SMF lexer of its own,
and random id sequences of a few kinds. `mutate(kind, base, data, number)` gives the same
bytes on every machine, so a failing case is named by its arguments.
"""

from __future__ import annotations

import random
import struct
from typing import NamedTuple

import numpy as np

from bangercli.midi.tokenizer import Tokenizer
from midi_fixtures import END_OF_TRACK, vlq

TOK = Tokenizer()


# --- a small SMF lexer, independent of score.py, to aim mutations at fields ---------------


class Smf:
    """A file as its 14-byte header and chunks [kind, body, declared length or None for the
    true one], to mutate field by field and write back."""

    def __init__(self, data: bytes) -> None:
        self.header = bytearray(data[:14].ljust(14, b"\0"))
        self.chunks: list[list] = []
        pos = 14
        while pos + 8 <= len(data):
            length = int.from_bytes(data[pos + 4 : pos + 8], "big")
            body = bytearray(data[pos + 8 : pos + 8 + length])
            self.chunks.append([data[pos : pos + 4], body, None])
            pos += 8 + length

    def tracks(self) -> list[list]:
        return [chunk for chunk in self.chunks if chunk[0] == b"MTrk"]

    def __bytes__(self) -> bytes:
        return bytes(self.header) + b"".join(
            kind + struct.pack(">I", len(body) if length is None else length) + body
            for kind, body, length in self.chunks
        )


class Event(NamedTuple):
    at: int  # offset of the delta time
    delta_end: int  # just past it
    status: int  # offset of the status byte, -1 under running status
    kind: str  # "channel", "meta", "sysex" or "system"
    size: slice  # the length field of a meta or sysex event (empty otherwise)
    data: int  # offset of the first data byte
    end: int


def events(body: bytes) -> list[Event]:
    """The events of a track body, as far as they make sense (mutated bodies stop early)."""
    found, pos, running = [], 0, 0
    try:
        while pos < len(body):
            at = pos
            while body[pos] & 0x80:
                pos += 1
            pos += 1
            delta_end, status, byte = pos, -1, body[pos]
            if byte >= 0x80:
                status, pos = pos, pos + 1 + (byte == 0xFF)
            elif running:
                byte = running
            else:
                break
            size = slice(pos, pos)
            if byte in (0xFF, 0xF0, 0xF7):
                kind, length, start = ("meta" if byte == 0xFF else "sysex"), 0, pos
                while body[pos] & 0x80:
                    length = (length << 7) | (body[pos] & 0x7F)
                    pos += 1
                length = (length << 7) | body[pos]
                size, pos = slice(start, pos + 1), pos + 1
                data, pos = pos, pos + length
            elif byte >= 0xF0:
                kind, data = "system", pos
            else:
                kind, data, running = "channel", pos, byte
                pos += 1 if byte & 0xE0 == 0xC0 else 2
            if pos > len(body):
                break
            found.append(Event(at, delta_end, status, kind, size, data, pos))
    except IndexError:
        pass
    return found


# --- mutations, one per class the issue lists, and havoc that stacks them -----------------

HUGE = (0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF)


def truncate(rng: random.Random, data: bytes) -> bytes:
    if rng.random() < 0.5 or len(data) < 14:
        return data[: rng.randrange(max(len(data), 1))]
    edges, pos = [14], 14  # near a chunk boundary or a chunk header
    for _, body, _ in Smf(data).chunks:
        pos += 8 + len(body)
        edges.append(pos)
    return data[: max(0, rng.choice(edges) + rng.randint(-9, 4))]


def flip_bits(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    if out:
        window = rng.choice((len(out), 16))  # anywhere, or a few in one event's worth of bytes
        start = rng.randrange(max(len(out) - window, 0) + 1)
        for _ in range(rng.choice((1, 1, 2, 3, 8, 32))):
            out[min(start + rng.randrange(window), len(out) - 1)] ^= 1 << rng.randrange(8)
    return bytes(out)


def header_lengths(rng: random.Random, data: bytes) -> bytes:
    midi = Smf(data)
    if rng.random() < 0.3:  # the track count
        midi.header[10:12] = struct.pack(">H", rng.choice((0, 1, 0xFFFF, rng.randrange(1 << 16))))
        return bytes(midi)
    length = rng.choice((0, 5, 7, 64, len(data) - 8, len(data), rng.randrange(1 << 32), *HUGE))
    midi.header[4:8] = struct.pack(">I", length)
    if 6 < length < 64 and rng.random() < 0.5:  # a longer header, as the standard allows
        midi.header += bytes(rng.randrange(256) for _ in range(length - 6))
    return bytes(midi)


def vlq_lengths(rng: random.Random, data: bytes) -> bytes:
    """Delta times and meta/sysex lengths replaced by huge, overlong or endless ones."""
    midi = Smf(data)
    for chunk in rng.sample(midi.tracks(), min(2, len(midi.tracks()))):
        body = chunk[1]
        found = events(body)
        for event in sorted(rng.sample(found, min(len(found), rng.randint(1, 3))), reverse=True):
            if event.kind in ("meta", "sysex") and event.status >= 0 and rng.random() < 0.5:
                target = event.size
            else:
                target = slice(event.at, event.delta_end)
            body[target] = rng.choice((
                vlq(0x0FFFFFFF), b"\x81\x80\x80\x80\x00", b"\xff" * rng.randint(4, 9),
                vlq(rng.randrange(1 << 28)), vlq(max(0, len(body) + rng.randint(-3, 3))),
            ))
        chunk[2] = None if rng.random() < 0.8 else max(0, len(body) + rng.randint(-8, 8))
    return bytes(midi)


def chunk_sizes(rng: random.Random, data: bytes) -> bytes:
    midi = Smf(data)
    if not midi.chunks or rng.random() < 0.2:  # an unknown chunk that lies about its size
        junk = bytearray(rng.randrange(256) for _ in range(rng.randrange(16)))
        at = rng.randint(0, len(midi.chunks))
        midi.chunks.insert(at, [b"XFIH", junk, rng.choice((len(junk) + 1, *HUGE))])
        return bytes(midi)
    chunk = rng.choice(midi.chunks)
    true = len(chunk[1])
    if rng.random() < 0.2:
        chunk[0] = rng.choice((b"MThd", b"Mtrk", b"\0\0\0\0"))
    else:
        chunk[2] = max(0, rng.choice((0, 1, true - 1, true + 1, true - rng.randint(2, 64),
                                      true + rng.randint(2, 64), *HUGE)))
    return bytes(midi)


def running_status(rng: random.Random, data: bytes) -> bytes:
    """Statuses dropped, changed or cancelled; bytes slipped between an event's bytes."""
    midi = Smf(data)
    tracks = [chunk for chunk in midi.tracks() if events(chunk[1])]
    if not tracks:
        return flip_bits(rng, data)
    chunk = rng.choice(tracks)
    body, found = chunk[1], events(chunk[1])
    channel = [e for e in found if e.kind == "channel"] or found
    event = rng.choice(channel)
    op = rng.randrange(6)
    if op == 0 and any(e.status >= 0 for e in channel):  # its data runs on the status before
        del body[rng.choice([e for e in channel if e.status >= 0]).status]
    elif op == 1:  # a sysex before a running-status event cancels its status
        at = rng.choice([e for e in channel if e.status < 0] or channel).at
        body[at:at] = b"\x00\xf0\x01\xf7"
    elif op == 2:  # a meta event before one does not
        body[event.at : event.at] = b"\x00\xff\x01\x03abc"
    elif op == 3:  # a real-time or system byte between an event's bytes
        body.insert(rng.randint(event.at + 1, event.end), rng.choice((0xF8, 0xFE, 0xF1, 0xF4)))
    elif op == 4 and event.status >= 0:  # a status with another number of data bytes
        body[event.status] = rng.choice((0x80, 0x90, 0xC0, 0xD0, 0xE0)) | rng.randrange(16)
    else:  # a data byte that reads as a status
        body[rng.randrange(event.data, event.end) if event.end > event.data else event.at] |= 0x80
    if rng.random() < 0.2:
        chunk[2] = max(0, len(body) + rng.choice((-1, 1)))
    return bytes(midi)


def many_tracks(rng: random.Random, data: bytes) -> bytes:
    midi = Smf(data)
    tracks = sorted((bytes(chunk[1]) for chunk in midi.tracks()), key=len)
    bodies = [b"", END_OF_TRACK] + tracks[:1]
    body = rng.choice(bodies)
    count = min(rng.randint(1000, 4000), 100_000 // (len(body) + 8))  # inputs under ~100 KB
    at = rng.randint(0, len(midi.chunks))
    midi.chunks[at:at] = [[b"MTrk", bytearray(body), None] for _ in range(count)]
    midi.header[10:12] = struct.pack(">H", rng.choice((len(midi.chunks) & 0xFFFF, 0xFFFF, 1)))
    return bytes(midi)


def ticks_per_beat(rng: random.Random, data: bytes) -> bytes:
    midi = Smf(data)
    midi.header[12:14] = struct.pack(">H", rng.choice((0, 0, 0, 1, 2, 3, 0x7FFF)))
    return bytes(midi)


def smpte(rng: random.Random, data: bytes) -> bytes:
    midi = Smf(data)
    frames = rng.choice((0xE8, 0xE7, 0xE3, 0xE2, 0x80, 0xFF, rng.randrange(0x80, 0x100)))
    midi.header[12] = frames  # -24, -25, -29, -30 frames per second, or nonsense
    midi.header[13] = rng.choice((0, 1, 4, 40, 80, 100, 255, rng.randrange(256)))
    return bytes(midi)


def havoc(rng: random.Random, data: bytes) -> bytes:
    """Two to four of the other mutations stacked, and raw byte inserts and deletes."""
    for _ in range(rng.randint(2, 4)):
        if rng.random() < 0.25:
            at = rng.randint(0, len(data))
            span = rng.randint(1, 16)
            insert = rng.randbytes(span) if rng.random() < 0.5 else b""
            data = data[:at] + insert + data[at + span :]
        else:
            data = rng.choice([m for m in MUTATIONS.values() if m is not havoc])(rng, data)
    return data


MUTATIONS = {
    "truncation": truncate,
    "bit flips": flip_bits,
    "huge or wrong lengths in the header": header_lengths,
    "huge, overlong or endless variable-length quantities": vlq_lengths,
    "wrong chunk sizes": chunk_sizes,
    "running-status abuse": running_status,
    "thousands of tracks": many_tracks,
    "zero or tiny ticks per beat": ticks_per_beat,
    "SMPTE time division": smpte,
    "havoc (2 to 4 of the above, raw bytes)": havoc,
}


def mutate(mutation: str, base: str, data: bytes, number: int) -> bytes:
    """Case `number` of one mutation of one base file: the same bytes on every machine."""
    return MUTATIONS[mutation](random.Random(f"{mutation}|{base}|{number}"), data)


# --- random token ids --------------------------------------------------------------------


def random_ids(kind: str, number: int) -> list:
    """Case `number` of one kind of id sequence (see TOKEN_KINDS)."""
    rng = random.Random(f"{kind}|{number}")
    if kind == "uniform":
        return [rng.randrange(-3, TOK.vocab_size + 3) for _ in range(rng.randint(0, 400))]
    if kind == "junk":  # not ids at all, mixed with ids
        junk = (None, "12", "x", 3.7, float("nan"), float("inf"), 2**70, -(2**70), True,
                np.int64(300), np.uint16(1400), b"\x01")
        return [rng.choice(junk) if rng.random() < 0.3 else rng.randrange(TOK.vocab_size)
                for _ in range(rng.randint(0, 300))]
    ids = [TOK.START, rng.choice((TOK.DRUMS_OFF, TOK.DRUMS_ON)), TOK.instrument_token(0)]
    for _ in range(rng.randint(0, 6) if kind == "long silences" else rng.randint(0, 80)):
        if kind == "long silences":  # onsets around the latest the reader accepts
            ids += [TOK.time_token(255)] * rng.choice((0, 100, 4112, 4112, 8000))
            ids.append(TOK.time_token(rng.choice((0, 15, 16, 17, 255))))
        else:
            ids.append(TOK.time_token(rng.randrange(0, 256)))
        ids += [TOK.durvel_token(rng.randint(1, 128), rng.randrange(8)),
                TOK.note_token(rng.randrange(12), rng.randrange(128))]
    for _ in range(len(ids) // 20 if kind == "grammatical, 5% broken" else 0):
        at = rng.randrange(len(ids))
        ids[at:at + 1] = rng.choice(([], [ids[at]] * 2, [rng.randrange(TOK.vocab_size)]))
    return ids + [TOK.END]


TOKEN_KINDS = ("uniform", "junk", "grammatical, 5% broken", "long silences")
