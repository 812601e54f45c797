"""pianola: learn to compose classical piano music with LSTMs.

The library does the work (no Prefect, no DVC imports); `tasks/` and `flows/` orchestrate it. Importing it quiets
TensorFlow's start-up logging (pianola.quiet).
"""

from pianola import quiet  # noqa: F401 - before anything imports TensorFlow

__version__ = "0.1.0"
