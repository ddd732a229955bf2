"""A minimal MLServer custom runtime that runs one .onnx file with ONNX Runtime.

Used only by bench/serve_rest.py to serve the same ONNX file as shipyard with the same session
settings (CPU provider, intra-op threads from `extra.intra_op_threads`, inter-op 1, all graph
optimizations). This file is imported inside MLServer's own venv (bench/.venv-mlserver); it must
not import anything from shipyard.

model-settings.json `parameters.extra` keys:
  intra_op_threads  int   ORT intra-op threads (default 2)
  offload           bool  run the session on one dedicated thread so that the event loop keeps
                          parsing requests while a batch runs (default true); false runs it
                          inline in the async predict(), blocking the loop like a plain handler
  allow_spinning    bool  ORT's intra-op spin-wait (session.intra_op.allow_spinning); absent = ORT's
                          default (on)
  stats_path        str   where to write {"batch_sizes": {rows: count}} (optional); flushed by a
                          background task every 0.25 s, so it costs nothing per request
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        extra = (self.settings.parameters.extra if self.settings.parameters else None) or {}
        path = await get_model_uri(self.settings)
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(extra.get("intra_op_threads", 2))
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if "allow_spinning" in extra:
            so.add_session_config_entry("session.intra_op.allow_spinning", "1" if extra["allow_spinning"] else "0")
        self._session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self._output_names = [o.name for o in self._session.get_outputs()]
        self._offload = bool(extra.get("offload", True))
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ort") if self._offload else None
        self._batch_sizes: Counter[int] = Counter()
        self._stats_path = extra.get("stats_path")
        self._dirty = False
        self._flusher = asyncio.get_running_loop().create_task(self._flush_loop()) if self._stats_path else None
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feed = {inp.name: NumpyCodec.decode_input(inp) for inp in payload.inputs}
        rows = int(next(iter(feed.values())).shape[0]) if feed else 0
        if self._executor is not None:
            loop = asyncio.get_running_loop()
            results = await loop.run_in_executor(self._executor, self._session.run, self._output_names, feed)
        else:
            results = self._session.run(self._output_names, feed)
        self._batch_sizes[rows] += 1
        self._dirty = True
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[
                NumpyCodec.encode_output(name, np.ascontiguousarray(value))
                for name, value in zip(self._output_names, results, strict=True)
            ],
        )

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            if self._dirty:
                self._dirty = False
                self._write_stats()

    def _write_stats(self) -> None:
        tmp = f"{self._stats_path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({"batch_sizes": {str(k): v for k, v in sorted(self._batch_sizes.items())}}, f)
        os.replace(tmp, self._stats_path)

    async def unload(self) -> bool:
        if self._flusher is not None:
            self._flusher.cancel()
        if self._stats_path and self._dirty:
            self._write_stats()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        self._session = None
        return True
