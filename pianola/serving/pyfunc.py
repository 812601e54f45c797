"""The registered model as MLflow logs it: a pyfunc model that generates pieces.

    mlflow models serve -m models:/pianola@champion --env-manager local
    curl -X POST 127.0.0.1:5000/invocations -H 'Content-Type: application/json' \
         -d '{"dataframe_records": [{}], "params": {"n": 2, "length": 300, "seed": 1}}'

Each input row is one request: no columns (or nulls) for a primer from the training windows the bundle
keeps, `primer_midi` (a MIDI file in base64) or `primer_tokens` (a list of the model's tokens). The
generation settings travel as inference params (see `signature`). Each piece comes back as one row:
the input row it answers, its index, its MIDI in base64, its tokens and its metrics.
"""

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

from pianola import tracking
from pianola.errors import BadRequest
from pianola.models.bundle import load_bundle
from pianola.serving.composer import (
    Composer,
    GenerationRequest,
    generate_request,
    piece_json,
)

PARAM_TYPES = {"n": DataType.long, "length": DataType.long, "strategy": DataType.string, "temperature": DataType.double,
               "top_k": DataType.long, "top_p": DataType.double, "repetition_penalty": DataType.double,
               "seed": DataType.long}


def signature() -> ModelSignature:
    """Inputs (an optional primer per row), outputs (one row per piece) and the settings as params."""
    defaults = GenerationRequest().settings()
    return ModelSignature(
        inputs=Schema([ColSpec(DataType.string, "primer_midi", required=False),
                       ColSpec(Array(DataType.string), "primer_tokens", required=False)]),
        outputs=Schema([ColSpec(DataType.long, "input"), ColSpec(DataType.long, "piece"),
                        ColSpec(DataType.string, "midi"), ColSpec(Array(DataType.string), "tokens"),
                        ColSpec(DataType.string, "metrics")]),
        params=ParamSchema([ParamSpec(name, dtype, defaults[name]) for name, dtype in PARAM_TYPES.items()]),
    )


def register_bundle(bundle_dir: Path) -> str:
    """Log a bundle folder to the active run as this pyfunc model, register it (alias candidate); the version."""
    return tracking.log_and_register_bundle(bundle_dir, ComposerModel(), signature=signature(),
                                            input_example=input_example())


def input_example() -> tuple[pd.DataFrame, dict]:
    """A request MLflow keeps beside the model (serving_input_example.json) and checks by running it: one short
    piece from a training primer."""
    return pd.DataFrame({"primer_midi": [None]}), {"n": 1, "length": 16, "seed": 0}


class ComposerModel(mlflow.pyfunc.PythonModel):
    """Generates pieces from the bundle logged as the artifact `bundle`."""

    def load_context(self, context: Any) -> None:

        bundle = load_bundle(context.artifacts["bundle"])
        self.composer = Composer(bundle, f"run:{bundle.info.get('run_id', 'unknown')}")

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        import json

        settings = {k: v for k, v in (params or {}).items() if v is not None}
        frame = model_input if isinstance(model_input, pd.DataFrame) and len(model_input) else pd.DataFrame([{}])
        rows = []
        for index, record in enumerate(frame.to_dict("records")):
            fields = dict(settings)
            for column in ("primer_midi", "primer_tokens"):
                value = record.get(column)
                if isinstance(value, np.ndarray):
                    value = value.tolist()
                if value is not None and not (isinstance(value, float) and np.isnan(value)):
                    fields[column] = value
            try:
                _, pieces = generate_request(self.composer, GenerationRequest.parse(fields, self.composer.limits))
            except BadRequest as e:
                raise MlflowException(f"input row {index}: {e}", error_code=INVALID_PARAMETER_VALUE) from e
            for number, piece in enumerate(pieces):
                answer = piece_json(piece)
                rows.append({"input": index, "piece": number, "midi": answer["midi"], "tokens": answer["tokens"],
                             "metrics": json.dumps(answer["metrics"])})
        return pd.DataFrame(rows, columns=["input", "piece", "midi", "tokens", "metrics"])
