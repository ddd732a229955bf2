"""Typed settings: the one source of defaults.

Precedence (highest first): CLI flags, `SHIPYARD_*` environment, the per-model `config.json` in the
repository, the defaults written here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def read_yaml(path: str | Path, what: str) -> Any:
    """A YAML file the user wrote (a recipe, a training config), or InvalidInput naming `what`,
    the file and, for a syntax error, the problem and where it is."""
    import yaml

    from shipyard.errors import InvalidInput

    p = Path(path)
    if not p.is_file():
        raise InvalidInput(f"{what} {p} does not exist")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InvalidInput(f"{what} {p} is not valid YAML: {problem}{where}") from None


def default_threads() -> int:
    """Intra-op threads per model: every core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


class BatchingConfig(BaseModel):
    """Dynamic batching for one model. `max_batch_size` 1 turns batching off."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(
        32, ge=1, le=4096, description="Most rows stacked into one call; 1 turns batching off."
    )
    max_queue_delay_us: int = Field(
        0,
        ge=0,
        le=10_000_000,
        description="How long a batch may wait for more requests once one is queued. 0 (as Triton's "
        "default): run what is queued at once; requests that arrive while the model is busy still batch.",
    )
    max_queue_size: int = Field(
        256, ge=1, le=1_000_000, description="Requests waiting beyond this are refused with 503."
    )
    adaptive: bool = Field(
        False,
        description="Under load (the previous batch held several requests), wait up to a tenth of "
        "the previous batch's compute time (at most 5 ms) for as many requests as were in the "
        "last round to arrive again. After a lone request it never waits. Off by default: it "
        "fills batches (small BERT at c=16: mostly 16 instead of 4-9) but gave no throughput gain "
        "on a 2-core machine where the client shares the cores (BENCHMARKS.md).",
    )


class GenerationConfig(BaseModel):
    """The generation engine of one causal LM (continuous batching over a paged KV cache)."""

    model_config = ConfigDict(extra="forbid")

    kv_cache_mb: int = Field(
        512, ge=1, le=1_000_000,
        description="Memory preallocated for the KV cache. Sequences take blocks as they grow; "
        "requests whose prompt does not fit in what is free wait in the queue, and when the cache "
        "runs out mid-generation the newest request is preempted and recomputed later.",
    )
    block_size: int = Field(16, ge=1, le=1024, description="Tokens per KV-cache block.")
    max_num_seqs: int = Field(
        32, ge=1, le=4096, description="Most sequences decoded together in one step."
    )
    max_batched_tokens: int = Field(
        256, ge=16, le=1_000_000,
        description="Token budget of one step: decoders take one each, prompts are prefilled in "
        "chunks with what is left, so a long prompt never stalls the decoders.",
    )
    max_queue_size: int = Field(
        256, ge=1, le=1_000_000,
        description="Requests waiting for a slot beyond this are refused (503 with Retry-After).",
    )
    max_model_len: int | None = Field(
        None, ge=16, description="Longest prompt + completion; default: the model's positions."
    )
    packed_linears: bool = Field(
        True, description="Reorder fp32 Linear weights once into oneDNN's blocked layout (faster "
        "matmuls at the few rows of a decode step; the model's own weights are replaced)."
    )
    attention_kernel: Literal["auto", "native", "torch"] = Field(
        "auto", description="Decode attention: 'native' reads keys and values where they lie in the "
        "cache's blocks (shipyard's C kernel, built on first use with the system compiler); 'torch' "
        "gathers them for scaled_dot_product_attention; 'auto' takes native when it builds here."
    )


class ShadowConfig(BaseModel):
    """A version that sees a copy of live traffic; its answers are compared, never returned."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, description="The shadow version (it must be loaded: version_policy all/specific).")
    fraction: float = Field(1.0, ge=0.0, le=1.0, description="Share of requests mirrored to it.")
    rtol: float = Field(1e-3, ge=0.0, description="Relative tolerance under which answers agree.")
    atol: float = Field(1e-4, ge=0.0, description="Absolute tolerance under which answers agree.")


class RoutingConfig(BaseModel):
    """Where requests that name no version go: a weighted split (canary) and an optional shadow.
    Re-read from config.json within about a second of a change; no restart."""

    model_config = ConfigDict(extra="forbid")

    weights: dict[Annotated[int, Field(ge=1)], Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict,
        description="Version -> weight, e.g. {\"1\": 90, \"2\": 10}. Versions not ready are skipped; "
        "empty: the latest ready version takes everything.",
    )
    shadow: ShadowConfig | None = Field(None, description="Mirror a share of traffic to this version.")


class ModelConfig(BaseModel):
    """Per-model serving config (`<repository>/<model>/config.json`)."""

    model_config = ConfigDict(extra="forbid")

    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    version_policy: str = Field(
        "latest",
        pattern=r"^(latest|all|specific)$",
        description="Which versions to load: the latest one, all, or those in `versions`.",
    )
    versions: list[int] = Field(default_factory=list, description="Versions loaded by 'specific'.")
    threads: int | None = Field(None, ge=1, le=256, description="Intra-op threads for this model.")
    generation: GenerationConfig = Field(
        default_factory=GenerationConfig, description="Generation engine settings (causal LMs only)."
    )
    routing: RoutingConfig | None = Field(None, description="Traffic split and shadow for requests without a version.")
    reject_non_finite: bool = Field(
        False,
        description="Refuse (400, naming the input and the first bad index) a request whose float "
        "inputs hold NaN or infinity, a JSON number past the datatype's range (1e300 in FP32) "
        "included. Off: such values reach the model; either way they are counted in "
        "shipyard_non_finite_total. Read when the model loads.",
    )


class Settings(BaseSettings):
    """Process-wide settings, read from `SHIPYARD_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="SHIPYARD_", extra="ignore")

    repository: Path = Field(Path("model-repository"), description="Model repository folder.")
    host: str = Field("127.0.0.1", description="Address the server binds.")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port.")
    threads: int = Field(
        default_factory=default_threads, ge=1, le=256, description="Intra-op threads per model."
    )
    max_request_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest request body accepted (413 beyond)."
    )
    trust_pickle: bool = Field(
        False, description="Allow loading pickle-based model files (can execute code)."
    )
    spin: bool = Field(
        False,
        description="Let ONNX Runtime's threads spin between parallel sections: a little lower "
        "latency on an idle machine, but it burns CPU the server's event loop needs.",
    )
    device: str = Field("cpu", description="'cpu' or 'cuda' for runtimes that can use either.")
    max_batch_size: int | None = Field(None, ge=1, description="Override every model's batching.")
    max_queue_delay_us: int | None = Field(None, ge=0, description="Override every model's delay.")
    max_queue_size: int | None = Field(None, ge=1, description="Override every model's queue bound.")
    adaptive: bool | None = Field(None, description="Override every model's adaptive batching.")
    kv_cache_mb: int | None = Field(None, ge=1, description="Override every LM's KV-cache memory.")
    max_num_seqs: int | None = Field(None, ge=1, description="Override every LM's running-sequence limit.")
    grpc_port: int = Field(8001, ge=0, le=65535, description="gRPC port (KServe V2 gRPC); 0 turns gRPC off.")
    auth: Path | None = Field(
        None, description="API key file (YAML, written by `shipyard keys create`); every route but "
        "health then needs a key. None: no keys needed."
    )
    # Connections (HTTP and gRPC): a client that never finishes a request must not hold a
    # connection, a file descriptor and a parser's buffers for ever.
    header_timeout_s: float = Field(
        10.0, gt=0, le=3600,
        description="Time a connection has to send a request's headers, from its first byte (or from "
        "connecting, for the first request): past it a partial request is answered 408, a silent "
        "connection is closed. On gRPC, the time to send the HTTP/2 preface and settings.",
    )
    body_timeout_s: float = Field(
        30.0, gt=0, le=3600,
        description="Longest pause allowed between two pieces of a request body: past it the request is "
        "answered 408 and the connection closed.",
    )
    min_body_rate_bytes_s: float = Field(
        1024.0, ge=0, le=1 << 30,
        description="Slowest a request body may arrive, in bytes a second, averaged from body_timeout_s "
        "after its start (Apache's mod_reqtimeout MinRate): a body that trickles in is answered 408 and "
        "the connection closed. 0: no minimum.",
    )
    keep_alive_timeout_s: float = Field(
        5.0, gt=0, le=3600,
        description="How long an HTTP connection is kept open after an answer, waiting for its next "
        "request (uvicorn's timeout_keep_alive).",
    )
    max_header_bytes: int = Field(
        16 * 1024, ge=1024, le=1024 * 1024,
        description="Largest request line and headers together (as h11's default); past it a request "
        "is answered 431.",
    )
    max_connections: int = Field(
        4096, ge=1, le=1_000_000,
        description="Most connections open at once on each port (HTTP and gRPC). Past it, a new HTTP "
        "connection is answered 503 with Retry-After and closed; a new gRPC one is closed at once. The "
        "default leaves room for a flood of idle clients (closed after header_timeout_s) without "
        "refusing health probes meanwhile; the open-files limit is raised to match when it can be.",
    )
    grpc_max_connection_idle_s: float = Field(
        300.0, ge=0, le=86400,
        description="A gRPC connection without a call for this long is sent GOAWAY (the client "
        "reconnects on its next call). 0: never.",
    )
    grpc_max_connection_age_s: float = Field(
        0.0, ge=0, le=86400 * 30,
        description="A gRPC connection older than this (give or take 10%) is sent GOAWAY, so that "
        "clients spread over new servers behind a load balancer. 0: never.",
    )
    grpc_max_connection_age_grace_s: float = Field(
        30.0, ge=0, le=86400,
        description="After the GOAWAY of grpc_max_connection_age_s, how long calls in flight may "
        "finish before the connection is closed.",
    )
    grpc_keepalive_time_s: float = Field(
        60.0, ge=1, le=86400,
        description="The server pings a gRPC connection silent for this long, to find clients that "
        "vanished without closing (the connection is closed if no answer comes in 20 s).",
    )
    grpc_min_ping_interval_s: float = Field(
        10.0, ge=1, le=86400,
        description="Clients may ping at most this often (calls or not); a client that pings more "
        "often is sent GOAWAY (ENHANCE_YOUR_CALM) after two such pings.",
    )
    grpc_max_concurrent_streams: int = Field(
        256, ge=1, le=1_000_000,
        description="Most calls in flight at once on one gRPC connection; clients queue the rest.",
    )

    # Model control (issue 13): whether the server follows the repository while it runs.
    model_control: Literal["none", "poll"] = Field(
        "none",
        description="'none' (Triton's default): the models loaded at start-up are served until a "
        "load/unload request; a version published meanwhile waits for POST .../load. 'poll': every "
        "poll_interval_s the server looks at the model folders (names only, nothing is read) and "
        "loads new models and versions and drops removed ones, by each model's version policy, "
        "beside what serves and swapped in when ready.",
    )
    poll_interval_s: float = Field(
        2.0, ge=0.1, le=3600, description="Seconds between looks at the repository (model_control 'poll')."
    )

    def batching_for(self, model: ModelConfig) -> BatchingConfig:
        """A model's batching with the process-wide overrides applied."""
        overrides = {
            k: v
            for k, v in {
                "max_batch_size": self.max_batch_size,
                "max_queue_delay_us": self.max_queue_delay_us,
                "max_queue_size": self.max_queue_size,
                "adaptive": self.adaptive,
            }.items()
            if v is not None
        }
        return model.batching.model_copy(update=overrides)


def generation_for(settings: Settings, model: ModelConfig) -> GenerationConfig:
    """A model's generation settings with the process-wide overrides applied."""
    overrides = {k: v for k, v in {"kv_cache_mb": settings.kv_cache_mb,
                                   "max_num_seqs": settings.max_num_seqs}.items() if v is not None}
    return model.generation.model_copy(update=overrides)
