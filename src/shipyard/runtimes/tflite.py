"""TFLite flatbuffers (`model.tflite`), run as they are by LiteRT's interpreter (`ai-edge-litert`,
the one Google ships; extra `shipyard[tensorflow]`).

An interpreter holds its tensors between `invoke` calls and is not thread-safe, so each version
keeps a small pool: a request takes an interpreter, resizes its inputs to the batch, runs, and
gives it back; concurrent requests beyond the pool wait for one."""

from __future__ import annotations

import queue
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import InvalidInput
from shipyard.repository import Signature, TensorSpec
from shipyard.runtimes.base import Runtime, RuntimeOptions
from shipyard.runtimes.extras import require
from shipyard.tensors import v2_datatype

FILE = "model.tflite"
POOL = 2  # interpreters per version: the server runs a batch at a time, the second covers a reload


def interpreter(path: Path, threads: int = 1) -> Any:
    """A LiteRT interpreter of the file, its tensors allocated; InvalidInput naming the file when
    it is not a TFLite model."""
    litert = require("ai_edge_litert.interpreter", "tensorflow", f"the TFLite model {path.name}")
    try:
        it = litert.Interpreter(model_path=str(path), num_threads=threads)
        it.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise InvalidInput(f"{path} is not a readable TFLite model: {str(e).splitlines()[0][:200]}") from None
    return it


def _details(it: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(inputs, outputs) of the model's one signature, each with a 'key' (the signature's name for
    it), else of the bare graph (keyed by tensor name)."""
    sigs = it.get_signature_list()
    if len(sigs) == 1:
        runner = it.get_signature_runner(next(iter(sigs)))
        return ([{**d, "key": k} for k, d in runner.get_input_details().items()],
                [{**d, "key": k} for k, d in runner.get_output_details().items()])
    return ([{**d, "key": d["name"]} for d in it.get_input_details()],
            [{**d, "key": d["name"]} for d in it.get_output_details()])


def _spec(detail: dict[str, Any]) -> TensorSpec:
    shape = [int(d) for d in detail.get("shape_signature", detail["shape"])]
    return TensorSpec(name=detail["key"], datatype=v2_datatype(np.dtype(detail["dtype"])), shape=shape)


def tflite_signature(path: Path) -> Signature:
    inputs, outputs = _details(interpreter(path))
    return Signature(inputs=[_spec(d) for d in inputs], outputs=[_spec(d) for d in outputs])


class Session:
    """One interpreter run by signature names (or tensor names), resizing to each batch."""

    def __init__(self, path: Path, threads: int) -> None:
        self.it = interpreter(path, threads)
        self.inputs, self.outputs = _details(self.it)
        self.shapes: dict[int, tuple[int, ...]] = {d["index"]: tuple(d["shape"]) for d in self.inputs}

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        resized = False
        for d in self.inputs:
            shape = tuple(feed[d["key"]].shape)
            if self.shapes[d["index"]] != shape:
                self.it.resize_tensor_input(d["index"], list(shape), strict=False)
                self.shapes[d["index"]] = shape
                resized = True
        if resized:
            self.it.allocate_tensors()
        for d in self.inputs:
            array = feed[d["key"]]
            if array.dtype != d["dtype"] or not array.flags.c_contiguous:
                array = np.ascontiguousarray(array, dtype=d["dtype"])
            self.it.set_tensor(d["index"], array)
        self.it.invoke()
        # get_tensor copies out of the interpreter's arena, so the result outlives the next invoke.
        return {d["key"]: self.it.get_tensor(d["index"]) for d in self.outputs}


def run_tflite(path: Path, inputs: dict[str, np.ndarray], names: dict[str, str] | None = None,
               threads: int = 1) -> dict[str, np.ndarray]:
    """Outputs of the file on `inputs` by signature name (`names` maps the version's names to the
    file's own, where they differ)."""
    names = names or {}
    session = Session(path, threads)
    out = session.run({names.get(k, k): v for k, v in inputs.items()})
    back = {v: k for k, v in names.items()}
    return {back.get(k, k): v for k, v in out.items()}


class TfliteRuntime(Runtime):
    format = "tflite"
    description = "TFLite model run by LiteRT's interpreter"

    def load(self) -> None:
        # The version's tensor names -> the file's (an export keeps the names of its parent).
        self.names: dict[str, str] = dict(self.manifest.extra.get("tflite_names", {}))
        self.back = {v: k for k, v in self.names.items()}
        self.pool: queue.LifoQueue[Session] = queue.LifoQueue()
        self.made = 0
        self.lock = threading.Lock()
        self.pool.put(Session(self.path / FILE, self.options.threads))
        self.made = 1

    def _take(self) -> Session:
        try:
            return self.pool.get_nowait()
        except queue.Empty:
            with self.lock:
                grow = self.made < POOL
                self.made += grow
            return Session(self.path / FILE, self.options.threads) if grow else self.pool.get()

    def infer(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        session = self._take()
        try:
            result = session.run({self.names.get(k, k): v for k, v in inputs.items()})
        finally:
            self.pool.put(session)
        result = {self.back.get(k, k): v for k, v in result.items()}
        return {name: result[name] for name in outputs}

    def unload(self) -> None:
        self.pool = queue.LifoQueue()

    @classmethod
    def claims(cls, source: Path) -> bool:
        return source.is_file() and source.suffix == ".tflite"

    @classmethod
    def inspect(cls, source: Path, options: RuntimeOptions) -> Signature:
        return tflite_signature(source)

    @classmethod
    def stage(cls, source: Path, dest: Path, options: RuntimeOptions) -> dict[str, Any]:
        shutil.copyfile(source, dest / FILE)
        return {}
