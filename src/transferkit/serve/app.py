"""The HTTP application: ``GET /``, ``GET /health``, ``GET /model``, ``POST /predict``.

Every refusal is JSON, ``{"detail": "<what was wrong and what is accepted>"}``, with a 4xx
status: 400 empty or corrupt, 413 too large (bytes or pixels), 415 not an image, 422 a
malformed request (no ``files`` field, a bad ``top_k``). Handlers are ``async``: uploads are
checked and decoded in worker threads, and the network answers the requests that arrive
together in one batch (:mod:`transferkit.serve.batcher`), so requests are served concurrently.
Each answer has ``label``, ``probability``, ``top_k``, ``novelty`` (how unlike the training
images, None without a score) and ``unknown`` (novelty above the threshold).
"""

import asyncio
import contextlib
import os
from importlib import resources
from typing import Annotated

from transferkit.errors import MissingExtraError
from transferkit.serve.uploads import UploadError, UploadLimits, open_upload

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations at run time.
try:
    from fastapi import FastAPI, File, HTTPException, Query, UploadFile
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import HTMLResponse
except ImportError as exc:  # pragma: no cover - the dev and serve extras install them
    raise MissingExtraError(f"serving needs FastAPI ({exc}); install it with: pip install 'transferkit[serve]'") from exc

MAX_TOP_K = 100


def create_app(model, *, limits: UploadLimits | None = None, precision: str = "auto", device: str = "cpu",
               unknown_threshold: float | None = None, max_batch_size: int | None = None, max_delay_ms: float | None = None,
               threads: int | None = None) -> FastAPI:
    """A FastAPI application serving ``model`` (a model folder, an ``.onnx`` file, or a :class:`ServedModel`).

    ``device`` and ``precision`` (auto | fp32 | bf16 | fp16) apply to a model folder, as for
    ``transferkit predict``: under ``"auto"`` a CPU computes in fp32, so the server answers with
    predict's and the ONNX file's probabilities (it calls the same ``predict_proba``). An ``.onnx``
    file runs on onnxruntime without importing torch. ``unknown_threshold`` replaces the
    model's calibrated novelty threshold; ``max_batch_size`` and ``max_delay_ms`` (None: the
    defaults of :mod:`transferkit.serve.batcher`) bound how requests are batched. ``threads``:
    the network's CPU threads, a setting of the whole process (None: leave it as it is;
    ``transferkit serve`` passes :func:`~transferkit.serve.model.serving_threads`).
    """
    from transferkit.serve.model import ServedModel

    if isinstance(model, ServedModel):
        served = model
    else:
        batching = {key: value for key, value in (("max_batch_size", max_batch_size), ("max_delay_ms", max_delay_ms)) if value is not None}
        served = ServedModel(model, precision=precision, device=device, unknown_threshold=unknown_threshold, threads=threads, **batching)
    limits = limits or UploadLimits()
    page = resources.files("transferkit.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        served.close()  # answer what is queued, then stop the batching thread

    app = FastAPI(title="transferkit", summary="Image classification with a fitted transferkit model.", lifespan=lifespan)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/model")
    def model_info() -> dict:
        return {**served.info(), "limits": {"max_bytes": limits.max_bytes, "max_pixels": limits.max_pixels, "max_files": limits.max_files}}

    @app.post("/predict")
    async def predict(
        files: Annotated[list[UploadFile], File(description="One or more image files.")],
        top_k: Annotated[int, Query(ge=1, le=MAX_TOP_K, description="How many classes to list per image.")] = 3,
        explain: Annotated[bool, Query(description="Also return a Grad-CAM heatmap overlay per image (PNG data URI).")] = False,
    ) -> dict:
        if len(files) > limits.max_files:
            raise HTTPException(413, f"{len(files)} files in one request; the limit is {limits.max_files}.")
        uploads = []
        for upload in files:
            # Read one byte past the limit: enough to know it is too large, never the whole of it.
            uploads.append((await upload.read(limits.max_bytes + 1), os.path.basename(upload.filename or "upload")))
        try:
            pixels = await run_in_threadpool(_decode, served, uploads, limits)
        except UploadError as error:
            raise HTTPException(error.status, str(error)) from None
        if explain:
            if not served.network.can_explain:
                raise HTTPException(400, "explain=true needs the model folder (heatmaps need the network's gradients); "
                                         "this server runs an .onnx file.")
            answers = await run_in_threadpool(served.explain, pixels, top_k=top_k)
        else:
            answers = served.answers(await asyncio.wrap_future(served.submit(pixels)), top_k=top_k)
        for upload, answer in zip(files, answers):
            answer["filename"] = os.path.basename(upload.filename or "upload")
        return {"predictions": answers}

    return app


def _decode(served, uploads: list[tuple[bytes, str]], limits: UploadLimits):
    """Check every upload, then decode them all as ``transferkit predict`` decodes files."""
    return served.decode([open_upload(data, name, limits) for data, name in uploads])
