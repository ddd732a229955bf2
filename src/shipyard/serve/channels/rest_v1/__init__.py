"""TF Serving / KServe V1 REST: `POST /v1/models/{m}[/versions/{v}]:predict`, `GET /v1/models/{m}`."""

from shipyard.serve.channels.rest_v1.routes import router

__all__ = ["router"]
