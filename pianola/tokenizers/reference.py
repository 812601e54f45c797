"""The paper's own music21 tokenization, and how closely another tokenizer agrees with it.

Tests and `bench/tokenize.py` use this as ground truth for the fast `paper` tokenizer; it is slow
(music21 needs seconds per file), so music21 is imported only when a file is parsed.
"""

from __future__ import annotations

import difflib
import os
import warnings


def music21_tokens(path: str | os.PathLike) -> list[str]:
    """The paper's tokens for one MIDI file: every note of every part, as music21 orders them.

    A Note gives its pitch name with octave (`C#4`), a Chord its normal order joined by dots
    (`0.4.7`); Unpitched notes and PercussionChords (MIDI channel 10) are skipped.
    """
    from music21 import chord, converter, note
    from music21.midi.translate import TranslateWarning

    with warnings.catch_warnings():
        # music21 warns about every track name that is not an instrument's (copyright notices...)
        warnings.simplefilter("ignore", TranslateWarning)
        # forceSource: parse the MIDI itself, not the pickle music21 caches from an earlier parse
        # of the same path (same tokens, but the cache would fake the timing and can go stale)
        score = converter.parse(os.fspath(path), forceSource=True)
    tokens: list[str] = []
    for element in score.flatten().notes:
        if isinstance(element, note.Note):
            tokens.append(str(element.pitch))
        elif isinstance(element, chord.Chord):
            tokens.append(".".join(str(pc) for pc in element.normalOrder))
    return tokens


def agreement(reference: list[list[str]], ours: list[list[str]]) -> float:
    """Share of reference tokens matched in order by `ours`, over all files (1.0 = identical).

    Per file, the matched count is the total size of difflib's matching blocks, so one extra or
    missing token costs one token rather than misaligning the rest of the file.
    """
    if len(reference) != len(ours):
        raise ValueError(f"{len(reference)} reference files but {len(ours)} tokenized files")
    total = sum(len(tokens) for tokens in reference)
    if total == 0:
        return 1.0
    matched = 0
    for ref_tokens, our_tokens in zip(reference, ours, strict=True):
        matcher = difflib.SequenceMatcher(None, ref_tokens, our_tokens, autojunk=False)
        matched += sum(block.size for block in matcher.get_matching_blocks())
    return matched / total
