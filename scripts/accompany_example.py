"""The gallery's accompaniment example, from a piece the shipped model never trained on.

    python scripts/accompany_example.py [--piece ../shared/midi/freedoom/d_e1m2.mid]

Cuts 8 bars of the piece (a validation piece of the default model's data split), keeps only
its guitar as the riff, and runs `banger generate --prompt riff.mid --add drums --add bass`.
Writes docs/gallery/accompany-{riff,banger,real}.png: the riff, banger's band, and the piece's
own guitar, bass and drums over the same bars. The MIDI stays in a temporary folder (the
corpus is not copied into the repository).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bangercli.midi.instruments import DRUMS, instrument_named  # noqa: E402
from bangercli.midi.midifile import write_midi  # noqa: E402
from bangercli.midi.tokenizer import Tokenizer  # noqa: E402
from bangercli.render.pianoroll import render, write_png  # noqa: E402

BARS = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--piece", type=Path,
                        default=ROOT.parent / "shared/midi/freedoom/d_e1m2.mid")
    parser.add_argument("--first-bar", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    tokenizer = Tokenizer()
    bar = tokenizer.config.steps_per_bar
    score = tokenizer.read(args.piece)
    offset = args.first_bar * bar
    guitar, bass = instrument_named("guitar").index, instrument_named("bass").index
    excerpt = [n._replace(start=n.start - offset) for n in score.notes
               if offset <= n.start < offset + BARS * bar
               and n.instrument in (guitar, bass, DRUMS.index)]
    riff = [n for n in excerpt if n.instrument == guitar]
    gallery = ROOT / "docs" / "gallery"
    length = BARS * bar
    with tempfile.TemporaryDirectory() as folder:
        riff_path = Path(folder) / "riff.mid"
        write_midi(riff, order=[guitar], grid=tokenizer.grid, bpm=score.bpm,
                   length=length).save(riff_path)
        out = Path(folder) / "out"
        command = ["banger", "generate", "--prompt", str(riff_path), "--add", "drums", "--add",
                   "bass", "--seed", str(args.seed), "--audio", "none", "--out", str(out),
                   "--name", "banger"]
        print("$", " ".join(command[:1] + ["generate", "--prompt", "riff.mid"] + command[4:8]
                                + command[8:10]), file=sys.stderr)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        added = tokenizer.read(out / "banger.mid").notes
    for name, notes in (("riff", riff), ("banger", added), ("real", excerpt)):
        path = write_png(render(notes, steps_per_bar=bar, length=length),
                         gallery / f"accompany-{name}.png")
        print(path.relative_to(ROOT))


if __name__ == "__main__":
    main()
