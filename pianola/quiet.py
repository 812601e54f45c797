"""Quiet start-up: TensorFlow's C++ logging and MLflow's download bar off by default, set before either is imported.

Imported first by pianola/__init__.py, so every `pianola` command, DVC stage and flow prints only what it has to
say. Each setting is a default: set the variable to see the logging again.
"""

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from importlib.util import find_spec
from tempfile import TemporaryFile

# TensorFlow's C++ logging below errors (cpu_feature_guard's instruction list, and what it logs while it runs);
# read when TensorFlow is first imported, which pianola does lazily, always after this module.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# MLflow's tqdm bar while it downloads artifacts (registering a model does), redrawn with carriage returns: on a
# terminal only.
if not getattr(sys.stderr, "isatty", lambda: False)():
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# Lines that `import tensorflow` writes on stderr whatever TF_CPP_MIN_LOG_LEVEL says: two of the shared libraries it
# loads log "oneDNN custom operations are on" from a static initialiser, each through its own copy of absl and before
# anything can configure it, and absl prefixes that with its notice. No setting silences them short of
# TF_ENABLE_ONEDNN_OPTS=0, which turns the oneDNN kernels off.
TENSORFLOW_IMPORT_NOISE = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    b"] oneDNN custom operations are on.",
)


@contextmanager
def stderr_without(noise: tuple[bytes, ...]) -> Iterator[None]:
    """Send file descriptor 2 (C libraries' stderr too) to a temporary file meanwhile, then write back every line
    that contains none of `noise`."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (AttributeError, OSError, ValueError):  # no stderr to filter
        yield
        return
    with TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (AttributeError, OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = b"".join(line for line in captured if not any(part in line for part in noise))
            while kept:
                kept = kept[os.write(2, kept):]


class QuietTensorFlowImport(MetaPathFinder):
    """Runs the first `import tensorflow` inside `stderr_without(TENSORFLOW_IMPORT_NOISE)`, then leaves sys.meta_path."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = find_spec(name)  # what the import would have found without this finder
        loader = spec.loader if spec else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def quiet_exec_module(module: object) -> None:
            try:
                with stderr_without(TENSORFLOW_IMPORT_NOISE):
                    exec_module(module)
            finally:
                del loader.exec_module  # back to the loader's own method

        loader.exec_module = quiet_exec_module
        return spec


# Only while INFO is below TensorFlow's threshold: TF_CPP_MIN_LOG_LEVEL=0 shows these lines as it shows the rest.
if os.environ["TF_CPP_MIN_LOG_LEVEL"].strip() not in ("", "0") and "tensorflow" not in sys.modules:
    sys.meta_path.insert(0, QuietTensorFlowImport())
