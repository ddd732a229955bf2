"""TFLite flatbuffers (`model.tflite`), run as they are by LiteRT's interpreter (`ai-edge-litert`,
the one Google ships; extra `shipyard[tensorflow]`).

An interpreter holds its tensors between `invoke` calls and is not thread-safe, so each version
keeps a small pool: a request takes an interpreter, resizes its inputs to the batch, runs, and
gives it back; concurrent requests beyond the pool wait for one."""

from __future__ import annotations

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
    """One interpreter run by signature names (or tensor names), resizing to each batch. The
    per-call path is a few attribute reads: each input's (key, index, dtype) is worked out once."""

    def __init__(self, path: Path, threads: int) -> None:
        self.it = interpreter(path, threads)
        self.inputs, self.outputs = _details(self.it)
        self.feeds = [(d["key"], d["index"], np.dtype(d["dtype"])) for d in self.inputs]
        self.fetches = [(d["key"], d["index"]) for d in self.outputs]
        self.shapes: dict[int, tuple[int, ...]] = {d["index"]: tuple(d["shape"]) for d in self.inputs}

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        it, shapes = self.it, self.shapes
        resized = False
        for key, index, _ in self.feeds:
            shape = feed[key].shape
            if shapes[index] != shape:
                it.resize_tensor_input(index, list(shape), strict=False)
                shapes[index] = shape
                resized = True
        if resized:
            it.allocate_tensors()
        for key, index, dtype in self.feeds:
            array = feed[key]
            if array.dtype != dtype or not array.flags.c_contiguous:
                array = np.ascontiguousarray(array, dtype=dtype)
            it.set_tensor(index, array)
        it.invoke()
        # get_tensor copies out of the interpreter's arena, so the result outlives the next invoke.
        return {key: it.get_tensor(index) for key, index in self.fetches}


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
        # Free interpreters: a list (pop and append are atomic), so a request that finds one pays
        # no lock; only one that must wait for a busy interpreter takes the condition.
        self.free: list[Session] = [Session(self.path / FILE, self.options.threads)]
        self.made = 1
        self.waiting = 0
        self.cond = threading.Condition()

    def _take(self) -> Session:
        try:
            return self.free.pop()
        except IndexError:
            pass
        with self.cond:
            while True:
                if self.free:
                    return self.free.pop()
                if self.made < POOL:
                    self.made += 1
                    break
                self.waiting += 1
                # a give that raced this check (appended, saw no waiter yet) is caught by the timeout
                self.cond.wait(0.01)
                self.waiting -= 1
        return Session(self.path / FILE, self.options.threads)

    def _give(self, session: Session) -> None:
        self.free.append(session)
        if self.waiting:
            with self.cond:
                self.cond.notify()

    def infer(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        session = self._take()
        try:
            if self.names:
                result = session.run({self.names.get(k, k): v for k, v in inputs.items()})
                result = {self.back.get(k, k): v for k, v in result.items()}
            else:
                result = session.run(inputs)
        finally:
            self._give(session)
        return {name: result[name] for name in outputs}

    def unload(self) -> None:
        self.free = []

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
