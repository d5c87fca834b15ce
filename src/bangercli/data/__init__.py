"""Training data: `banger preprocess` (MIDI collection -> token shards), windows, augmentation."""
