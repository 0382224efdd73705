"""`slm-gateway`: one OpenAI/Ollama endpoint for a fleet of slm-runtime pods.

    slm-gateway --config gateway.yaml           static mode: deployments and URLs from the file
    slm-gateway --kubernetes [--namespace NS]   follow SLMDeployments and their EndpointSlices

Exit codes: 0 ok; 2 bad arguments or config.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from slm_gateway.access import AccessError
from slm_gateway.config import GatewayConfig

log = logging.getLogger("slm_gateway")

EXIT_OK, EXIT_USAGE = 0, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slm-gateway", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument(
        "--config", type=Path, help="gateway config YAML (static mode, or settings for --kubernetes)"
    )
    p.add_argument("--kubernetes", action="store_true", help="discover the fleet from the cluster")
    p.add_argument(
        "--namespace", action="append", default=[], help="namespace to watch (repeatable; default all)"
    )
    p.add_argument("--keys-file", help="keys YAML (overrides keysFile)")
    p.add_argument(
        "--upstream-key-file", help="the gateway's own key for the runtimes (overrides upstreamKeyFile)"
    )
    p.add_argument("--audit-log-content", action="store_true", help="also log prompts and answers")
    p.add_argument("--host", help="listen address (overrides server.host)")
    p.add_argument("--port", type=int, help="listen port (overrides server.port)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def load_config(args: argparse.Namespace) -> GatewayConfig:
    config = GatewayConfig.from_file(args.config) if args.config else GatewayConfig.model_validate({})
    data = config.model_dump(by_alias=True)
    if args.keys_file:
        data["keysFile"] = args.keys_file
    if args.upstream_key_file:
        data["upstreamKeyFile"] = args.upstream_key_file
    if args.audit_log_content:
        data["audit"]["logContent"] = True
    if args.host:
        data["server"]["host"] = args.host
    if args.port:
        data["server"]["port"] = args.port
    return GatewayConfig.model_validate(data)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.config and not args.kubernetes:
        print("slm-gateway: give --config FILE (static mode) or --kubernetes", file=sys.stderr)
        return EXIT_USAGE
    try:
        config = load_config(args)
        from slm_gateway.app import create_app

        app = create_app(config, kubernetes_namespaces=args.namespace if args.kubernetes else None)
    except (OSError, ValidationError, AccessError, ValueError) as exc:
        print(f"slm-gateway: {exc}", file=sys.stderr)
        return EXIT_USAGE
    uvicorn.run(
        app,
        host=config.server.host,
        port=config.server.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
