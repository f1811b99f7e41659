"""Serve a fitted model over HTTP: a JSON API and a small page to drop images on (FastAPI + uvicorn).

Examples
--------
>>> from transferkit.serve import create_app
>>> app = create_app("runs/model")  # doctest: +SKIP
>>> # uvicorn.run(app, host="127.0.0.1", port=8000), or: transferkit serve runs/model
"""

from transferkit.serve.app import create_app
from transferkit.serve.uploads import UploadLimits

__all__ = ["UploadLimits", "create_app"]
