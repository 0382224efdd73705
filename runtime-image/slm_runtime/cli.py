"""`slm-runtime`: serve a model, fetch one, convert one to ONNX, or generate a tiny one.

Exit codes: 0 ok; 1 unexpected failure; 2 bad arguments or config; 3 checksum mismatch;
4 download/fetch failed; 5 the model failed to load (serve).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from pydantic import ValidationError

from slm_runtime.config import RuntimeConfig
from slm_runtime.errors import AuthConfigError, ChecksumError, FetchError, SlmError

log = logging.getLogger("slm_runtime")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_CHECKSUM, EXIT_FETCH, EXIT_LOAD = 0, 1, 2, 3, 4, 5


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slm-runtime", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve a model over the Ollama and OpenAI APIs")
    s.add_argument("--model", help="GGUF file or ONNX folder (overrides model.path)")
    s.add_argument("--format", choices=["gguf", "onnx", "auto"], help="backend (overrides model.format)")
    s.add_argument("--host", help="listen address (overrides server.host)")
    s.add_argument("--port", type=int, help="listen port (overrides server.port)")
    s.add_argument("--config", type=Path, help="runtime config YAML rendered by the operator")
    s.add_argument("--name", help="model name clients use (overrides model.name)")
    s.add_argument("--parallel", type=int, help="concurrent sequences (overrides runtime.parallel)")

    f = sub.add_parser("fetch", help="download (or generate) a model, verified and atomically")
    f.add_argument(
        "--uri", required=True, help="https://, http://, hf://org/repo[@rev]/file, file://, tiny://"
    )
    f.add_argument("--sha256", help="expected hex digest of the file (or archive)")
    f.add_argument("--dest", required=True, type=Path, help="destination file (folder with --extract)")
    f.add_argument("--extract", action="store_true", help="unpack a .tar/.tar.gz archive into dest")
    f.add_argument(
        "--folder", action="store_true", help="hf:// folder, fetched file by file (--sha256: manifest digest)"
    )
    f.add_argument(
        "--max-bytes",
        type=_quantity,
        help="size limit of the file or the unpacked archive, bytes or a quantity like 20Gi (default 64Gi)",
    )

    t = sub.add_parser("tiny-model", help="write a small random-weight model with a real tokenizer")
    t.add_argument("--format", required=True, choices=["gguf", "onnx"])
    t.add_argument("--out", required=True, type=Path)
    t.add_argument(
        "--quantization", choices=["f32", "q8_0", "q4_0"], help="GGUF only; default f32 for tiny, else q8_0"
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--shape", default="tiny", help="tiny (default), small, or qwen2.5-0.5b (real SLM dims)")

    c = sub.add_parser("convert", help="convert a llama-architecture GGUF to an onnxruntime-genai folder")
    c.add_argument("gguf", type=Path, help="the GGUF file")
    c.add_argument("--to", required=True, choices=["onnx"], help="target format")
    c.add_argument("--precision", required=True, choices=["int4", "fp32"])
    c.add_argument("--out", type=Path, help="folder to write (default: print the cached folder)")
    c.add_argument("--cache-dir", type=Path, help="conversion cache (default ~/.cache/slm-operator/onnx)")

    e = sub.add_parser(
        "select-provider",
        help="open the ONNX model on the configured execution providers (with fallback) and report which one "
        "loaded it: the init container that tells the operator about a fallback",
    )
    e.add_argument("--config", type=Path, required=True, help="runtime config YAML rendered by the operator")
    e.add_argument("--model", help="ONNX folder (overrides model.path)")
    e.add_argument(
        "--report", type=Path, default=Path("/dev/termination-log"), help="where to write the JSON report"
    )
    return p


_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 1 << 10, "Mi": 1 << 20}
_UNITS |= {"Gi": 1 << 30, "Ti": 1 << 40}


def _quantity(text: str) -> int:
    """Bytes from `123`, `500Mi`, `20Gi`, `1T` (a Kubernetes quantity, as in cache.size)."""
    number = text.rstrip("kMGTi")
    unit = text[len(number) :]
    if unit not in _UNITS or not number.replace(".", "", 1).isdigit():
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (bytes, or e.g. 500Mi, 20Gi)")
    return int(float(number) * _UNITS[unit])


def load_settings(args: argparse.Namespace) -> RuntimeConfig:
    """The config file (if any) with command-line flags applied on top."""
    config = RuntimeConfig.from_file(args.config) if args.config else RuntimeConfig()
    data: dict[str, Any] = config.model_dump(by_alias=True)
    overrides = {
        ("model", "path"): args.model,
        ("model", "format"): args.format,
        ("model", "name"): args.name,
        ("server", "host"): args.host,
        ("server", "port"): args.port,
        ("runtime", "parallel"): args.parallel,
    }
    for (section, key), value in overrides.items():
        if value is not None:
            data[section][key] = value
    return RuntimeConfig.model_validate(data)


def detect_format(path: Path) -> str:
    """`onnx` for a folder with genai_config.json, `gguf` for a file starting with GGUF magic."""
    if path.is_dir():
        return "onnx"
    try:
        with path.open("rb") as f:
            if f.read(4) == b"GGUF":
                return "gguf"
    except OSError:
        pass
    raise SlmError(f"cannot tell the model format of {path}; pass --format")


def build_engine(settings: RuntimeConfig) -> Any:
    """The engine for the configured model (imports the native libraries lazily): every GGUF
    model gets the continuous-batching engine, whatever `runtime.parallel` is (one sampler, one
    loader, one embedding path); ONNX a backend behind the SerialEngine."""
    from slm_runtime.engine import SerialEngine
    from slm_runtime.hardware import cpu_limit

    if not settings.model.path:
        raise SlmError("no model: pass --model or set model.path in the config")
    path = Path(settings.model.path)
    fmt = settings.model.format if settings.model.format != "auto" else detect_format(path)
    rt = settings.runtime
    if fmt == "gguf":
        from slm_runtime.backends.gguf_batched import BatchedGGUFEngine, BatchedSettings

        return BatchedGGUFEngine(
            str(path),
            settings=BatchedSettings(
                parallel=rt.parallel,
                context_length=rt.context_length,
                batch_size=rt.batch_size,
                threads=rt.threads or cpu_limit(),
                gpu_layers=rt.gpu_layers,
            ),
            name=settings.model.name,
            quantization=settings.model.quantization,
        )
    from slm_runtime.backends.onnx import OnnxBackend

    backend = OnnxBackend(
        path,
        name=settings.model.name,
        context_length=rt.context_length,
        quantization=settings.model.quantization,
        providers=rt.execution_providers,
    )
    if rt.parallel > 1:
        # Waiting requests decode together in one generator (backends/onnx_batching.py).
        from slm_runtime.backends.onnx_batching import BatchingOnnxEngine

        return BatchingOnnxEngine(backend, max_batch=rt.parallel)
    return SerialEngine(backend)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from slm_runtime.server.app import create_app
    from slm_runtime.server.guard import uvicorn_options

    settings = load_settings(args)
    engine = build_engine(settings)
    app = create_app(settings, engine)
    service = app.state.service
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_config=None,
        timeout_graceful_shutdown=5,
        access_log=False,
        # connection limits (the probe listener's apart), head and keep-alive timeouts
        **uvicorn_options(settings.limits, settings.server.metrics_port),
    )
    server = DrainingServer(
        config,
        drain=lambda: service.limiter.drain(settings.limits.drain_seconds),
        fatal=service.wait_load_failed,
    )
    server.run(sockets=listen_sockets(config, settings.server.metrics_port))
    return EXIT_LOAD if service.load_error else EXIT_OK


def listen_sockets(config: Any, metrics_port: int | None) -> list[socket.socket] | None:
    """With `server.metricsPort`: the API socket and the metrics/probe socket, both served by
    the one uvicorn server (server/metrics_port.py routes by port; server/guard.py bounds the probe
    socket's connections apart from the API's). Without it: None, uvicorn binds."""
    if metrics_port is None:
        return None
    api = config.bind_socket()
    return [api, socket.create_server((config.host, metrics_port), family=api.family)]


def _make_draining_server() -> Any:
    import uvicorn

    class _DrainingServer(uvicorn.Server):  # type: ignore[misc]
        """On the first SIGTERM: readiness 503 and new requests refused, in-flight ones finish
        (up to limits.drainSeconds), then uvicorn shuts down. A second signal exits at once."""

        def __init__(self, config: Any, drain: Any, fatal: Any) -> None:
            super().__init__(config)
            self._drain = drain
            self._fatal = fatal
            self._draining = False
            self._loop: asyncio.AbstractEventLoop | None = None

        async def serve(self, sockets: Any = None) -> None:
            self._loop = asyncio.get_running_loop()
            watcher = asyncio.ensure_future(self._exit_on_fatal())
            try:
                await super().serve(sockets)
            finally:
                watcher.cancel()

        async def _exit_on_fatal(self) -> None:
            # A model that cannot load will not get better: exit (non-zero) so Kubernetes shows
            # CrashLoopBackOff with the reason in the log, instead of a pod that is never ready.
            error = await self._fatal()
            log.error("exiting: model failed to load: %s", error)
            self.should_exit = True

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self._draining or self._loop is None or sig == signal.SIGINT:
                super().handle_exit(sig, frame)
                return
            self._draining = True
            log.info("received signal %d: draining", sig)
            self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._finish()))

        async def _finish(self) -> None:
            drained = await self._drain()
            log.info("drain %s; shutting down", "complete" if drained else "timed out")
            self.should_exit = True

    return _DrainingServer


def DrainingServer(config: Any, drain: Any, fatal: Any) -> Any:  # noqa: N802 -- a class factory
    return _make_draining_server()(config, drain, fatal)


def _fetch(args: argparse.Namespace) -> int:
    from slm_runtime.fetch import DEFAULT_MAX_BYTES, fetch, redact

    result = fetch(
        args.uri,
        args.dest,
        sha256=args.sha256,
        extract=args.extract,
        folder=args.folder,
        max_bytes=args.max_bytes or DEFAULT_MAX_BYTES,
    )
    log.info("%s ready at %s%s", redact(args.uri), result.path, " (cache hit)" if result.cache_hit else "")
    return EXIT_OK


def _tiny_model(args: argparse.Namespace) -> int:
    from slm_runtime.tiny.shapes import SHAPES

    if args.shape not in SHAPES:
        raise SlmError(f"unknown shape {args.shape!r}; known: {', '.join(sorted(SHAPES))}")
    shape = SHAPES[args.shape]
    if args.format == "gguf":
        from slm_runtime.tiny.gguf_model import Quantization, write_gguf

        quantization: Quantization = args.quantization or ("f32" if args.shape == "tiny" else "q8_0")
        write_gguf(args.out, shape, quantization, args.seed)
    else:
        from slm_runtime.tiny.onnx_model import write_onnx

        write_onnx(args.out, shape, args.seed)
    log.info("wrote %s model to %s", args.format, args.out)
    return EXIT_OK


def _convert(args: argparse.Namespace) -> int:
    from slm_runtime.convert import convert_gguf_to_onnx

    result = convert_gguf_to_onnx(args.gguf, args.precision, out=args.out, cache=args.cache_dir)
    print(result.path)
    return EXIT_OK


def _select_provider(args: argparse.Namespace) -> int:
    import json

    from slm_runtime.backends.onnx_providers import open_model

    settings = RuntimeConfig.from_file(args.config)
    path = Path(args.model or settings.model.path or "")
    if not path.is_dir():
        raise SlmError(f"select-provider needs an ONNX model folder, got {str(path)!r}")
    model, report = open_model(path, settings.runtime.execution_providers)
    del model
    text = json.dumps(report.to_json(), sort_keys=True)
    args.report.write_text(text + "\n", encoding="utf-8")
    print(text)
    return EXIT_OK


def _termination_message(text: str, path: Path = Path("/dev/termination-log")) -> None:
    """Write `text` where Kubernetes reads a container's termination message (if it is there)."""
    if not path.exists():
        return  # not in a pod: the log line says it
    try:
        with path.open("w", encoding="utf-8") as f:
            f.write(text[:4000] + "\n")
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handlers = {
        "serve": _serve,
        "fetch": _fetch,
        "tiny-model": _tiny_model,
        "convert": _convert,
        "select-provider": _select_provider,
    }
    try:
        return handlers[args.command](args)
    except ChecksumError as exc:
        log.error("%s", exc)
        return EXIT_CHECKSUM
    except FetchError as exc:
        log.error("%s", exc)
        return EXIT_FETCH
    except (ValidationError, OSError) as exc:
        log.error("%s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return EXIT_USAGE
    except AuthConfigError as exc:  # the pod's termination message says why it will not serve
        log.error("%s", exc)
        _termination_message(str(exc))
        return EXIT_USAGE
    except SlmError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
