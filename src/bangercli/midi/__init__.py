"""MIDI in and out: the 12 instrument categories, the MIDI file reader/writer, the tokenizer."""
