"""Arrange the POP909 songs of the corpus for a band: derived training data (docs/pop909-band.md).

    python scripts/pop909_band.py ../shared/midi --out DIR [--force]

Writes DIR/pop909band/NNN.mid (General MIDI: melody on a synth lead, piano, bass, drums on
channel 10), DIR/pop909band/NOTICE.md (the sources' licences) and arrangements.csv. Only songs
and Groove files in the training split of `banger preprocess` are used. Counts and skipped
songs go to stderr; stdout gets the output folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bangercli.data.pop909_band import BandOptions, arrange_pop909  # noqa: E402
from bangercli.errors import BangerError  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path,
                        help="the corpus folder (with pop909/, pop909-annotations/, groove/)")
    parser.add_argument("--out", type=Path, required=True, help="folder to write pop909band/ into")
    parser.add_argument("--force", action="store_true", help="replace an earlier pop909band/ there")
    parser.add_argument("--melody-program", type=int, default=BandOptions.melody_program,
                        help="General MIDI program of the melody (0 keeps it on piano)")
    parser.add_argument("--no-fills", action="store_true", help="no drum fills at phrase ends")
    parser.add_argument("--val-fraction", type=float, default=BandOptions.val_fraction,
                        help="the --val-fraction `banger preprocess` will be run with")
    parser.add_argument("--verbose", action="store_true", help="list every skipped song")
    args = parser.parse_args()
    options = BandOptions(melody_program=args.melody_program, val_fraction=args.val_fraction,
                          phrase_bars=0 if args.no_fills else BandOptions.phrase_bars)

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\r{done}/{total} songs", end="", file=sys.stderr, flush=True)

    try:
        report = arrange_pop909(args.corpus, args.out, options=options, force=args.force,
                                progress=progress)
    except BangerError as err:
        print(f"error: {err}" + (f"\nhint: {err.hint}" if err.hint else ""), file=sys.stderr)
        return err.exit_code
    if sys.stderr.isatty():
        print(file=sys.stderr)
    skipped = ", ".join(f"{n} {reason}" for reason, n in report.skipped.most_common()) or "none"
    notes = ", ".join(f"{part} {n:,}" for part, n in sorted(report.notes.items()))
    print(f"arranged {report.arranged} songs in {report.seconds:.1f} s (skipped: {skipped})\n"
          f"notes: {notes}\ndrums from {report.grooves} Groove beats and {report.fills} fills "
          "(training split, pop styles)",
          file=sys.stderr)
    for song, reason in report.skipped_songs if args.verbose else []:
        print(f"skipped {song}: {reason}", file=sys.stderr)
    print(report.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
