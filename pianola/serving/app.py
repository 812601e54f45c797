"""`pianola serve`: the registered champion over HTTP (FastAPI), with a page to listen on.

    POST /v1/generate                 JSON settings (every field optional) -> pieces: id, MIDI base64, tokens, metrics
    GET  /v1/pieces                   the newest pieces (the page's gallery)
    GET  /v1/pieces/{id}              one piece's record; {id}.mid, {id}.wav, {id}.png its files
    GET  /v1/model                    the model served: version, tokenizer, held-out metrics, limits, defaults
    GET  /healthz                     liveness, the version served, pieces in flight
    GET  /                            the page; /docs the OpenAPI docs

The model is loaded once. With an alias URI (`models:/pianola@champion`) a thread checks the alias every
`poll_s` seconds; when it has moved, the new version is loaded beside the old one and swapped in, and the
old one finishes the pieces it has in flight before it stops, so no request fails across the change.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import symusic

from pianola.errors import BadRequest, PianolaError
from pianola.midi.notes import score_notes
from pianola.models.bundle import load_bundle
from pianola.monitoring.drift import note_features
from pianola.serving.composer import (
    Composer,
    GenerationRequest,
    Limits,
    Primer,
    piece_json,
)
from pianola.serving.engine import Engine, EngineClosed
from pianola.serving.store import KINDS, InferenceLog, PieceStore, new_piece_id

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
FEATURE_DECIMALS = 4


@dataclass
class Deployment:
    """One loaded model version and its engine."""

    uri: str  # what was loaded: models:/NAME/VERSION or a folder
    version: str
    composer: Composer
    engine: Engine


def resolve(model: str) -> tuple[str, str]:
    """(the URI of one fixed model, its version) for a bundle folder or an MLflow model URI."""
    if model.startswith("models:/") and "@" in model:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        from pianola.tracking import setup, tracking_uri

        setup()
        name, alias = model[len("models:/") :].split("@", 1)
        try:
            version = str(MlflowClient().get_model_version_by_alias(name, alias).version)
        except MlflowException as e:
            raise PianolaError(f"{model}: no such model alias in MLflow at {tracking_uri()} ({e.message})") from e
        return f"models:/{name}/{version}", version
    if model.startswith("models:/"):
        return model, model.rsplit("/", 1)[-1]
    return model, f"folder:{Path(model).resolve().name}"  # a name, not the server's path


class Service:
    """Generation for many clients: one engine batching every request's pieces, the store, the log."""

    def __init__(self, model: str, store: str | Path, log_path: str | Path | None = None,
                 limits: Limits | None = None, poll_s: float = 10.0, max_rows: int = 64) -> None:
        self.model = model
        self.limits = limits or Limits()
        self.max_rows = max_rows
        self.store = PieceStore(store)
        self.log = InferenceLog(log_path or Path(store) / "inference.jsonl")
        self.deployment = self._deploy(*resolve(model))
        self.swaps = 0
        self.stopping = threading.Event()
        self.poller = None
        if model.startswith("models:/") and "@" in model:
            self.poller = threading.Thread(target=self._poll, args=(poll_s,), name="pianola-alias", daemon=True)
            self.poller.start()

    def _deploy(self, uri: str, version: str) -> Deployment:

        bundle = load_bundle(uri)
        return Deployment(uri, version, Composer(bundle, version, self.limits), Engine(bundle, self.max_rows))

    def refresh(self) -> bool:
        """Take up the version the alias now names, if it moved; whether it did."""
        uri, version = resolve(self.model)
        if version == self.deployment.version:
            return False
        new = self._deploy(uri, version)
        old, self.deployment = self.deployment, new
        self.swaps += 1
        log.info("now serving %s version %s (was %s)", self.model, version, old.version)
        threading.Thread(target=old.engine.close, name="pianola-drain", daemon=True).start()
        return True

    def _poll(self, every: float) -> None:
        while not self.stopping.wait(every):
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - a registry hiccup must not stop the service; try again later
                log.exception("checking %s failed; still serving version %s", self.model, self.deployment.version)

    def close(self) -> None:
        self.stopping.set()
        self.deployment.engine.close()
        self.log.close()

    def generate(self, fields: dict) -> dict:
        """Serve one request (JSON-like fields): pieces stored, the request logged; BadRequest for a bad one."""
        started = time.time()
        request = GenerationRequest.parse(fields, self.limits)
        for attempt in range(2):
            deployment = self.deployment
            primer = deployment.composer.primer(request)
            try:
                ticket = deployment.engine.submit(primer.ids, request.length, request.sampling, request.seed)
                break
            except EngineClosed:  # swapped out between reading self.deployment and submitting
                if attempt:
                    raise
        try:
            ids = ticket.future.result(timeout=self.limits.timeout_s)
        except TimeoutError:
            deployment.engine.cancel(ticket)
            raise BadRequest(f"generation took over {self.limits.timeout_s:g} s; ask for fewer or shorter pieces",
                             status=503) from None
        generated = time.time()
        pieces = deployment.composer.pieces(ids)
        settings = request.settings()
        out = []
        for piece in pieces:
            piece_id = new_piece_id()
            self.store.save(piece_id, piece.midi(), {
                "id": piece_id, "time": generated, "model_version": deployment.version, "settings": settings,
                "primer": primer.source, "metrics": piece.metrics})
            out.append(piece_json(piece, piece_id))
        if primer.source == "midi":
            self.store.save_primer(request.primer_midi, primer.fingerprint)
        elif primer.source == "tokens":  # kept as MIDI too: retraining adds the primers users sent to the corpus
            decoded = deployment.composer.bundle.tokenizer.decode(primer.tokens)
            self.store.save_primer(decoded.dumps_midi(), primer.fingerprint)
        self.store.prune()
        self.log.append({
            "time": started, "seconds": round(time.time() - started, 4), "generate_seconds": round(generated - started, 4),
            "model_version": deployment.version, "model_uri": deployment.uri, "settings": settings,
            "primer": self._primer_record(deployment, request, primer),
            "pieces": [{"id": p["id"], "metrics": p["metrics"], "features": features(c.notes)}
                       for p, c in zip(out, pieces)],
        })
        return {"model_version": deployment.version, "pieces": out}

    @staticmethod
    def _primer_record(deployment: Deployment, request: GenerationRequest, primer: Primer) -> dict:
        """The primer as the log keeps it; a user's primer with its notes' features (input drift reads them)."""
        record = {"source": primer.source, "fingerprint": primer.fingerprint, "tokens": len(primer.tokens)}
        if primer.source == "midi":
            record["features"] = features(score_notes(symusic.Score.from_midi(request.primer_midi)))
        elif primer.source == "tokens":
            record["features"] = features(score_notes(deployment.composer.bundle.tokenizer.decode(primer.tokens)))
        return record


def features(notes: np.ndarray) -> dict[str, list[float]]:
    """The drift features of a piece's notes (pitch, duration, inter-onset interval), JSON-ready."""
    return {name: np.round(values, FEATURE_DECIMALS).tolist() for name, values in note_features(notes).items()}


def validation_problem(error: dict) -> str:
    """One of FastAPI's validation errors, said for a person."""
    where = ".".join(str(p) for p in error["loc"][1:])
    if error["type"] == "json_invalid":
        return f"the body is not valid JSON ({error.get('ctx', {}).get('error', error['msg'])} at {where or 'its start'})"
    if error["loc"][:1] == ("body",) and error["type"] == "dict_type":
        return "the body must be a JSON object of settings"
    return f"{where or error['loc'][0]}: {error['msg']}"


def create_app(service: Service):
    """The FastAPI application around `service`."""
    from fastapi import Body, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles

    import pianola

    app = FastAPI(title="pianola", version=pianola.__version__,
                  description="Classical piano music from an LSTM: generate, listen, download.")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    max_body = service.limits.max_primer_bytes * 4 // 3 + 64_000

    @app.middleware("http")
    async def cap_body(request: Request, call_next):
        too_big = JSONResponse({"detail": f"request body over {max_body:,} bytes"}, status_code=413)
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > max_body):
            return too_big
        if size is None and request.method == "POST":  # chunked: read up to the cap, no further
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > max_body:
                    return too_big
            request._body = bytes(body)  # what the route reads (Starlette keeps a body read in middleware)
        return await call_next(request)

    @app.exception_handler(BadRequest)
    async def bad_request(_request: Request, error: BadRequest):
        return JSONResponse({"detail": str(error)}, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError):
        return JSONResponse({"detail": "; ".join(map(validation_problem, error.errors())) or "invalid request"},
                            status_code=422)

    @app.exception_handler(Exception)
    async def failed(_request: Request, error: Exception):  # uvicorn logs the traceback
        return JSONResponse({"detail": f"internal error ({type(error).__name__}); see the server log"}, status_code=500)

    @app.post("/v1/generate", summary="Generate pieces")
    def generate(body: dict = Body(default_factory=dict, examples=[{"n": 1, "length": 500, "strategy": "top_p",
                                                                     "temperature": 1.0, "top_p": 0.95, "seed": 0}])):
        """Every field is optional: n, length, strategy (greedy | temperature | top_k | top_p), temperature,
        top_k, top_p, repetition_penalty, seed, and a primer: primer_midi (a MIDI file in base64) or
        primer_tokens (a list of the model's tokens)."""
        return service.generate(body)

    @app.get("/v1/pieces", summary="The newest pieces")
    def pieces(limit: int = 12):
        return {"pieces": service.store.latest(max(1, min(limit, 100)))}

    @app.get("/v1/pieces/{name}", summary="A piece's record, or its .mid, .wav or .png")
    def piece(name: str):
        stem, _, kind = name.partition(".")
        if not kind:
            return service.store.record(stem)
        path = service.store.path(stem, kind)
        return FileResponse(path, media_type=KINDS[kind], filename=name if kind == "mid" else None)

    @app.get("/v1/model", summary="The model served")
    def model():
        served = service.deployment.uri
        return service.deployment.composer.describe() | ({"uri": served} if served.startswith("models:/") else {})

    @app.get("/healthz", summary="Liveness")
    def healthz():
        return {"status": "ok", "model_version": service.deployment.version,
                "in_flight": service.deployment.engine.in_flight()}

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    return app


def serve(model: str, host: str, port: int, store: Path, log_path: Path | None, limits: Limits, poll_s: float) -> None:
    """Run the service until interrupted."""
    import uvicorn

    service = Service(model, store, log_path, limits, poll_s)
    try:
        uvicorn.run(create_app(service), host=host, port=port, log_level="info")
    finally:
        service.close()
