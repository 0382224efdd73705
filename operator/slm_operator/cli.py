"""`slm-operator`: print the CRD, render an SLMDeployment offline, or run the operator.

    slm-operator crd                                   # the CRD generated from slm_operator.api
    slm-operator rbac                                  # the ClusterRole `run` needs
    slm-operator render -f examples/gpu.yaml [--nodes nodes.yaml] [--namespace NS] [--image IMG]
    slm-operator run [--namespace NS]... | --all-namespaces [--peering NAME | --standalone]
                     [--metrics-port 9090] [--liveness http://0.0.0.0:8081/healthz] [--resync-seconds 60]
                     [--workers 16] [--peering-lifetime 60] [--[no-]check-auth-secrets]
                     [--allowed-image-prefix P]... [--allow-control-plane]
                     [--denied-annotation-domain D]... [--allow-unverified-models]
                     [--gateway-key-sha256 HEX]...

`render` needs no cluster: without `--nodes` placement picks the first preferred hardware class
(see slm_operator.placement). `--nodes` takes a YAML file of Node (and optionally Pod) objects,
as separate documents or a `kind: List`, e.g. `kubectl get nodes -o yaml`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from slm_operator.api import KIND, SLMDeployment, name_problem
from slm_operator.api.crd import crd_yaml
from slm_operator.errors import SpecError
from slm_operator.placement import place
from slm_operator.policy import DEFAULT_DENIED_ANNOTATION_DOMAINS, Policy
from slm_operator.render import RenderContext, render_all
from slm_operator.render.yamlout import dump_all
from slm_operator.settings import (
    GATEWAY_KEY_SHA256_ENV,
    Settings,
    autoscale_from_env,
    gateway_key_sha256,
    gateway_key_sha256_from_env,
    gateway_namespace_from_env,
    gateway_url_from_env,
    image_from_env,
    priority_from_env,
    resync_from_env,
)


def _documents(path: str) -> list[dict[str, Any]]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    docs: list[dict[str, Any]] = []
    for doc in yaml.safe_load_all(text):
        if not isinstance(doc, dict):
            continue
        if doc.get("kind", "").endswith("List") and "items" in doc:
            docs.extend(d for d in doc["items"] if isinstance(d, dict))
        else:
            docs.append(doc)
    return docs


def render_documents(
    objects: Iterable[dict[str, Any]],
    nodes: Sequence[dict[str, Any]] = (),
    pods: Sequence[dict[str, Any]] = (),
    *,
    namespace: str | None = None,
    image: str | None = None,
) -> str:
    """Multi-document YAML of every child of every SLMDeployment in `objects` (deterministic)."""
    out: list[dict[str, Any]] = []
    for raw in objects:
        if raw.get("kind") != KIND:
            continue
        resource = SLMDeployment.model_validate(raw)
        problem = name_problem(resource.name) if resource.name else None
        if problem is not None:
            raise SpecError(problem)
        ns = namespace or resource.metadata.get("namespace")
        placement = place(resource.spec, nodes, pods)
        ctx = RenderContext(
            name=resource.name,
            namespace=ns,
            spec=resource.spec,
            placement=placement,
            default_image=image or image_from_env(),
        )
        out.extend(render_all(ctx))
    return dump_all(out)


def _render(args: argparse.Namespace) -> int:
    objects = _documents(args.filename)
    inventory = _documents(args.nodes) if args.nodes else []
    nodes = [d for d in inventory if d.get("kind", "Node") == "Node"]
    pods = [d for d in inventory if d.get("kind") == "Pod"]
    try:
        sys.stdout.write(render_documents(objects, nodes, pods, namespace=args.namespace, image=args.image))
    except (ValidationError, SpecError) as err:
        sys.stderr.write(f"error: {err}\n")
        return 1
    return 0


def _run(args: argparse.Namespace) -> int:
    from slm_operator.reconcile.runner import run_operator  # kopf is only needed here

    try:
        gateway_digests = (
            tuple(dict.fromkeys(args.gateway_key_sha256))
            if args.gateway_key_sha256
            else gateway_key_sha256_from_env()
        )
    except ValueError as err:
        print(f"slm-operator: ${GATEWAY_KEY_SHA256_ENV}: {err}", file=sys.stderr)
        return 2
    settings = Settings(
        runtime_image=args.image or image_from_env(),
        namespaces=tuple(args.namespace or ()),
        all_namespaces=args.all_namespaces or not args.namespace,
        peering=args.peering,
        standalone=args.peering is None,
        metrics_port=args.metrics_port,
        liveness=args.liveness,
        resync_seconds=args.resync_seconds if args.resync_seconds is not None else resync_from_env(),
        priority=args.priority if args.priority is not None else priority_from_env(),
        gateway_namespace=gateway_namespace_from_env(),
        gateway_url=gateway_url_from_env(),
        workers=args.workers,
        peering_lifetime=args.peering_lifetime,
        policy=Policy(
            allowed_image_prefixes=tuple(args.allowed_image_prefix or ()),
            allow_control_plane=args.allow_control_plane,
            denied_annotation_domains=tuple(
                d
                for d in (
                    args.denied_annotation_domain
                    if args.denied_annotation_domain is not None
                    else DEFAULT_DENIED_ANNOTATION_DOMAINS
                )
                if d
            ),
            allow_unverified_models=args.allow_unverified_models,
        ),
        check_auth_secrets=(
            args.check_auth_secrets if args.check_auth_secrets is not None else bool(args.namespace)
        ),
        autoscale_seconds=autoscale_from_env()[0],
        demand_url=autoscale_from_env()[1],
        gateway_key_sha256=gateway_digests,
    )
    run_operator(settings)
    return 0


def _digest_arg(value: str) -> str:
    try:
        return gateway_key_sha256(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slm-operator", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("crd", help="print the SLMDeployment CRD (YAML)")
    sub.add_parser("rbac", help="print the ClusterRole the operator needs (YAML)")
    sub.add_parser("docs", help="print the SLMDeployment reference (Markdown), generated from the API")
    render = sub.add_parser("render", help="print the objects an SLMDeployment becomes, without a cluster")
    render.add_argument("-f", "--filename", required=True, help="SLMDeployment YAML file ('-' for stdin)")
    render.add_argument("--nodes", help="YAML of Node (and Pod) objects to place against")
    render.add_argument("-n", "--namespace", help="namespace to put on the objects")
    render.add_argument("--image", help="runtime image (default: $SLM_RUNTIME_IMAGE or the release image)")
    run = sub.add_parser("run", help="run the operator (kopf) against the current kubeconfig")
    run.add_argument("-n", "--namespace", action="append", help="namespace to watch (repeatable)")
    run.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)"
    )
    peering = run.add_mutually_exclusive_group()
    peering.add_argument("--peering", help="kopf peering object name, for HA (one active replica)")
    peering.add_argument("--standalone", action="store_true", help="no peering (the default)")
    run.add_argument(
        "--priority", type=int, help="peering priority (default: a hash of $POD_ID, distinct per replica)"
    )
    run.add_argument("--metrics-port", type=int, default=9090, help="Prometheus metrics port (0 disables)")
    run.add_argument("--liveness", help="kopf liveness endpoint, e.g. http://0.0.0.0:8081/healthz")
    run.add_argument(
        "--resync-seconds", type=float, help="drift-correction period (default $SLM_RESYNC_SECONDS or 60)"
    )
    run.add_argument("--image", help="runtime image (default: $SLM_RUNTIME_IMAGE or the release image)")
    run.add_argument(
        "--workers", type=int, default=16, help="reconciles that may run at once (kopf's handler threads)"
    )
    run.add_argument(
        "--peering-lifetime",
        type=int,
        default=60,
        help="seconds a replica's peering keep-alive lasts: how long a standby waits for a dead leader",
    )
    policy = run.add_argument_group("policy", "what SLMDeployments may ask for (slm_operator.policy)")
    policy.add_argument(
        "--allowed-image-prefix",
        action="append",
        help="runtime images must start with this (repeatable; default: any image)",
    )
    policy.add_argument(
        "--allow-control-plane",
        action="store_true",
        help="allow tolerations of every taint or of control-plane taints, and control-plane node selectors",
    )
    policy.add_argument(
        "--denied-annotation-domain",
        action="append",
        help="pod annotation keys in this domain (and its subdomains) are refused (repeatable; "
        "default: kubernetes.io and k8s.io; pass '' to deny none)",
    )
    policy.add_argument(
        "--allow-unverified-models",
        action="store_true",
        help="serve model variants without a sha256 (default: every downloaded variant needs one)",
    )
    run.add_argument(
        "--check-auth-secrets",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="GET the API-key Secret a spec names before applying (needs get on secrets; "
        "default: on with --namespace, off cluster-wide)",
    )
    run.add_argument(
        "--gateway-key-sha256",
        action="append",
        type=_digest_arg,
        metavar="HEX",
        help="SHA-256 of slm-gateway's upstream key: runtimes with spec.auth accept that key too "
        "(repeatable, two during a rotation; default: $SLM_GATEWAY_KEY_SHA256, comma-separated)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "crd":
        sys.stdout.write(crd_yaml())
        return 0
    if args.command == "render":
        return _render(args)
    if args.command == "docs":
        from slm_operator.api.reference import reference_markdown

        sys.stdout.write(reference_markdown())
        return 0
    if args.command == "rbac":
        from slm_operator.rbac import cluster_role  # imports kopf via the handler tables

        sys.stdout.write(dump_all([cluster_role()]))
        return 0
    return _run(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
