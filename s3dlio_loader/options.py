"""Typed options with documented defaults, each overridable by an ``S3DLIO_*`` variable.

Precedence, lowest to highest: the default in the dataclass, the environment variable
``S3DLIO_<FIELD NAME IN CAPITALS>``, then a keyword passed in code. An unknown option
name raises :class:`~s3dlio_loader.errors.ConfigError` instead of being ignored.

>>> StoreOptions(max_in_flight=8).max_in_flight
8
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from .errors import ConfigError

MiB = 1 << 20

_T = TypeVar("_T", bound="OptionsBase")


@dataclasses.dataclass(frozen=True)
class OptionsBase:
    """Common machinery: environment overrides, validation, documentation table."""

    env_prefix: ClassVar[str] = "S3DLIO_"

    @classmethod
    def env_var(cls, name: str) -> str:
        """The environment variable that overrides option ``name``."""
        return cls.env_prefix + name.upper()

    @classmethod
    def from_env(cls: type[_T], environ: Mapping[str, str] | None = None, **overrides: Any) -> _T:
        """Build options from defaults, then ``S3DLIO_*`` variables, then ``overrides``.

        Raises:
            ConfigError: an override names no option, or a value does not parse or validate.
        """
        environ = os.environ if environ is None else environ
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            raise ConfigError(
                f"unknown {cls.__name__} option(s) {unknown}; known options: {sorted(fields)}"
            )
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for name in fields:
            var = cls.env_var(name)
            if var in environ:
                values[name] = _parse(environ[var], hints[name], var)
        values.update(overrides)
        return cls(**values)

    def replace(self: _T, **changes: Any) -> _T:
        """A copy with ``changes`` applied (unknown names raise ConfigError)."""
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise ConfigError(f"unknown {type(self).__name__} option(s) {unknown}; known: {sorted(fields)}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def describe(cls) -> list[tuple[str, str, str, str]]:
        """Rows of (option, environment variable, default, help) for documentation."""
        rows = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else "(required)"
            rows.append((f.name, cls.env_var(f.name), repr(default), str(f.metadata.get("help", ""))))
        return rows


def _parse(text: str, hint: Any, var: str) -> Any:
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin is not None and args:  # Optional[X] / X | None
        if text.strip().lower() in ("", "none", "null"):
            return None
        hint = args[0]
    try:
        if hint is bool:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if hint is int:
            return _parse_size(text)
        if hint is float:
            return float(text)
        return text
    except ValueError:
        kind = getattr(hint, "__name__", hint)
        raise ConfigError(f"environment variable {var}={text!r} is not a valid {kind}") from None


_SIZE_SUFFIXES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _parse_size(text: str) -> int:
    """Parse ``"4096"``, ``"64k"``, ``"32MiB"``, ``"1g"`` into an integer."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    if t and t[-1] in _SIZE_SUFFIXES:
        return int(float(t[:-1]) * _SIZE_SUFFIXES[t[-1]])
    return int(t)


def _opt(default: Any, help: str) -> Any:
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class StoreOptions(OptionsBase):
    """How a :class:`~s3dlio_loader.storage.Store` talks to storage.

    These are the loader's own knobs; backend configuration (endpoint, credentials,
    region...) goes in fsspec ``storage_options`` instead.
    """

    max_in_flight: int = _opt(64, "Most requests in flight at once for get_many/get_ranges/upload/download.")
    range_threshold: int = _opt(
        32 * MiB, "Objects of known size above this many bytes are fetched as concurrent range requests."
    )
    range_chunk: int = _opt(8 * MiB, "Size of each range request when a large object is split.")
    coalesce_gap: int = _opt(
        256 * 1024, "get_ranges merges two ranges of one object when the gap between them is at most this."
    )
    max_attempts: int = _opt(6, "Attempts per request (first try + retries) for transient faults.")
    retry_base_delay: float = _opt(0.05, "First retry back-off in seconds; doubles each retry, with full jitter.")
    retry_max_delay: float = _opt(5.0, "Cap of one retry back-off in seconds.")
    delete_batch: int = _opt(1000, "Objects per delete request batch.")
    max_delete_concurrency: int = _opt(32, "Most delete batches in flight; fewer for small deletions.")
    fadvise: str = _opt(
        "auto",
        "file:// page-cache hint: auto (sequential for whole/large reads, random for small ranges), "
        "sequential, random, none.",
    )
    fadvise_random_below: int = _opt(1 * MiB, "With fadvise=auto, range reads below this size are hinted random.")
    writer_part_size: int = _opt(16 * MiB, "Part size of streaming (multipart) writers on object stores.")
    oplog: str | None = _opt(None, "Path of a zstd-compressed TSV op-log recording every request.")
    disable_backend_retries: bool = _opt(
        True,
        "Turn off the retries built into s3fs/botocore, gcsfs and the Azure SDK, so that retries are "
        "done (and counted) once, by the Store.",
    )
    s3_lean_reads: bool = _opt(
        True,
        "s3://: send GETs (whole objects and ranges) as SigV4-signed urllib3 requests instead of through "
        "botocore (a quarter of the CPU per object); other requests, and options it does not handle, use s3fs.",
    )

    def __post_init__(self) -> None:
        positive = ("max_in_flight", "range_chunk", "max_attempts", "delete_batch", "max_delete_concurrency",
                    "writer_part_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"StoreOptions.{name} must be a positive integer (got {name}={value!r})")
        for name in ("range_threshold", "coalesce_gap", "fadvise_random_below"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"StoreOptions.{name} must be an integer >= 0 (got {name}={value!r})")
        if self.retry_base_delay < 0 or self.retry_max_delay < 0:
            raise ConfigError(
                f"retry delays must be >= 0 (got retry_base_delay={self.retry_base_delay!r}, "
                f"retry_max_delay={self.retry_max_delay!r})"
            )
        if self.fadvise not in ("auto", "sequential", "random", "none"):
            raise ConfigError(
                f"StoreOptions.fadvise must be auto, sequential, random or none (got fadvise={self.fadvise!r})"
            )


@dataclasses.dataclass(frozen=True)
class MultiEndpointOptions(OptionsBase):
    """How a :class:`~s3dlio_loader.storage.multi.MultiEndpointStore` spreads requests over endpoints.

    Variables are spelled ``S3DLIO_MULTI_<NAME>`` (``S3DLIO_MULTI_STRATEGY=least_connections``).
    """

    env_prefix: ClassVar[str] = "S3DLIO_MULTI_"

    strategy: str = _opt(
        "round_robin",
        "Endpoint choice per request: round_robin (in turn) or least_connections (fewest requests in flight).",
    )
    backoff_s: float = _opt(
        5.0, "Seconds an endpoint is left out after a request failed there (after the Store's own retries)."
    )
    max_backoff_s: float = _opt(60.0, "Cap of the back-off, which doubles with each consecutive failure.")
    failover: bool = _opt(
        True, "Retry a request that failed transiently on the other endpoints (they must hold the same objects)."
    )
    replicate_writes: bool = _opt(
        False, "put/open_writer/delete/copy go to every endpoint (independent replicas) instead of one."
    )

    def __post_init__(self) -> None:
        if self.strategy not in ("round_robin", "least_connections"):
            raise ConfigError(
                "MultiEndpointOptions.strategy must be round_robin or least_connections "
                f"(got strategy={self.strategy!r})"
            )
        if not self.backoff_s >= 0 or not self.max_backoff_s >= 0:  # also rejects NaN
            raise ConfigError(
                f"back-off delays must be >= 0 (got backoff_s={self.backoff_s!r}, "
                f"max_backoff_s={self.max_backoff_s!r})"
            )


@dataclasses.dataclass(frozen=True)
class DatagenOptions(OptionsBase):
    """How :mod:`s3dlio_loader.datagen` and the op-log replay write generated objects.

    Variables are spelled ``S3DLIO_DATAGEN_<NAME>`` (``S3DLIO_DATAGEN_WORKERS=16``).
    """

    env_prefix: ClassVar[str] = "S3DLIO_DATAGEN_"

    workers: int = _opt(8, "Threads building and writing dataset objects in parallel (generate_dataset).")
    max_in_flight: int = _opt(
        32, "Objects written (put_template) or requests replayed (replay_oplog) concurrently."
    )
    chunk_size: int = _opt(
        16 * MiB, "Generated objects larger than this are streamed in pieces of this size (bounded memory)."
    )

    def __post_init__(self) -> None:
        for name in ("workers", "max_in_flight", "chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"DatagenOptions.{name} must be a positive integer (got {name}={value!r})")


#: Option classes documented in docs/configuration.md (later layers add theirs here).
DOCUMENTED_OPTIONS: list[type[OptionsBase]] = [StoreOptions, MultiEndpointOptions, DatagenOptions]


def render_options_markdown() -> str:
    """The option tables of docs/configuration.md, generated from the dataclasses."""
    parts = []
    for cls in DOCUMENTED_OPTIONS:
        parts.append(f"### `{cls.__name__}`\n")
        doc = (cls.__doc__ or "").strip().split("\n\n")[0]
        parts.append(" ".join(doc.split()) + "\n")
        parts.append("| option | environment variable | default | meaning |")
        parts.append("| --- | --- | --- | --- |")
        for name, var, default, text in cls.describe():
            parts.append(f"| `{name}` | `{var}` | `{default}` | {text} |")
        parts.append("")
    return "\n".join(parts)
