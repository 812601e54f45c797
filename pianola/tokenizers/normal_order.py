"""Chord normal orders for the `paper` tokenizer: every pitch-class set -> music21's `normalOrder`.

music21 computes a chord's normal order from Forte set tables; rather than reimplement those rules,
`python -m pianola.tokenizers.normal_order` asks music21 once for all 4095 non-empty sets and
writes pianola/tokenizers/normal_order.json, which `normal_order_table()` loads without music21.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from pianola.io import atomic_write_json

TABLE_PATH = Path(__file__).resolve().parent / "normal_order.json"
N_SETS = 1 << 12  # pitch-class sets as 12-bit masks: bit pc is set when pitch class pc sounds


def pitch_classes(mask: int) -> list[int]:
    """The pitch classes in a 12-bit mask, ascending."""
    return [pc for pc in range(12) if mask >> pc & 1]


def set_name(mask: int) -> str:
    """The table's key for a mask: its pitch classes ascending, joined by dots (`0.4.7`)."""
    return ".".join(str(pc) for pc in pitch_classes(mask))


def music21_normal_order(mask: int) -> str:
    """music21's normal order of the set, as the paper wrote it: pitch classes joined by dots."""
    from music21 import chord

    return ".".join(str(pc) for pc in chord.Chord(pitch_classes(mask)).normalOrder)


def build_table() -> dict[str, str]:
    """Set name -> normal-order token, for every non-empty pitch-class set (takes a few seconds)."""
    return {set_name(mask): music21_normal_order(mask) for mask in range(1, N_SETS)}


@cache
def normal_order_table() -> tuple[str, ...]:
    """Normal-order token indexed by pitch-class mask (index 0, the empty set, is unused).

    Loaded from the shipped JSON once per process, so encoding never needs music21.
    """
    with open(TABLE_PATH, encoding="utf-8") as f:
        by_name: dict[str, str] = json.load(f)["normal_order"]
    if len(by_name) != N_SETS - 1:
        raise ValueError(
            f"{TABLE_PATH}: expected {N_SETS - 1} pitch-class sets, found {len(by_name)}; "
            "regenerate it with `python -m pianola.tokenizers.normal_order`"
        )
    return ("",) + tuple(by_name[set_name(mask)] for mask in range(1, N_SETS))


def main() -> None:
    """Regenerate pianola/tokenizers/normal_order.json from music21."""
    from music21 import VERSION_STR

    atomic_write_json(
        TABLE_PATH,
        {
            "description": "music21 chord.Chord(pitch classes).normalOrder for every non-empty "
            "pitch-class set; key = the set's pitch classes ascending, joined by dots",
            "music21_version": VERSION_STR,
            "normal_order": build_table(),
        },
    )
    TABLE_PATH.chmod(0o644)  # package data: readable by all, unlike the temporary file it was
    print(f"wrote {TABLE_PATH}")


if __name__ == "__main__":
    main()
