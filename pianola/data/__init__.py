"""Data: sources and ingest (MIDI -> data/raw), the corpus of tokens, the vocabulary, the sequences of windows."""
