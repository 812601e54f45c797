"""pianola: learn to compose classical piano music with LSTMs.

The library does the work (no Prefect, no DVC imports); `tasks/` and `flows/` orchestrate it.
"""

__version__ = "0.1.0"
