"""The HTTP application: ``GET /``, ``GET /health``, ``GET /model``, ``POST /predict``.

Every refusal is JSON, ``{"detail": "<what was wrong and what is accepted>"}``, with a 4xx
status: 400 empty or corrupt, 413 too large (bytes or pixels), 415 not an image, 422 a
malformed request (no ``files`` field, a bad ``top_k``). Handlers are ``async`` and hand the
decoding and the network to worker threads, so requests are served concurrently.
"""

import os
from importlib import resources
from typing import Annotated

from transferkit.errors import ConfigError
from transferkit.serve.uploads import UploadError, UploadLimits, open_upload

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations at run time.
try:
    from fastapi import FastAPI, File, HTTPException, Query, UploadFile
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import HTMLResponse
except ImportError as exc:  # pragma: no cover - the dev and serve extras install them
    raise ConfigError("serving needs FastAPI; install it with: pip install 'transferkit[serve]'") from exc

MAX_TOP_K = 100


def create_app(model, *, limits: UploadLimits | None = None, precision: str = "auto", device: str = "cpu") -> FastAPI:
    """A FastAPI application serving ``model`` (a model folder, or a :class:`ServedModel`).

    ``device`` and ``precision`` (auto | fp32 | bf16 | fp16) apply to a model folder, as for
    ``transferkit predict``: under ``"auto"`` a CPU computes in fp32, so the server answers with
    predict's and the ONNX file's probabilities.
    """
    from transferkit.serve.model import ServedModel

    served = model if isinstance(model, ServedModel) else ServedModel(model, precision=precision, device=device)
    limits = limits or UploadLimits()
    page = resources.files("transferkit.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    app = FastAPI(title="transferkit", summary="Image classification with a fitted transferkit model.")

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
        images = []
        for upload in files:
            name = os.path.basename(upload.filename or "upload")
            # Read one byte past the limit: enough to know it is too large, never the whole of it.
            data = await upload.read(limits.max_bytes + 1)
            try:
                images.append(await run_in_threadpool(open_upload, data, name, limits))
            except UploadError as error:
                raise HTTPException(error.status, str(error)) from None
        answers = await run_in_threadpool(served.predict, images, top_k=top_k, explain=explain)
        for upload, answer in zip(files, answers):
            answer["filename"] = os.path.basename(upload.filename or "upload")
        return {"predictions": answers}

    return app
