"""Commands that serve and call models: serve, predict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from modelhost.cli.base import HomeOption, app, err, friendly, out, registry_for, settings_from
from modelhost.errors import ConfigError


@app.command()
@friendly
def serve(
    models: Annotated[
        list[str] | None,
        typer.Argument(
            help="archive files (.mh), or registered NAME (production) / NAME:VERSION; "
            "none: serve again what this server served last (from the registry)"
        ),
    ] = None,
    host: Annotated[str | None, typer.Option(help="bind address [127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="port [8080]; 0 = any free port")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N")] = None,
    instances: Annotated[int | None, typer.Option(help="instances per model [1]")] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="override the archive's")] = None,
    max_batch_delay_ms: Annotated[float | None, typer.Option(help="override the archive's")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error")] = None,
    home: HomeOption = None,
    management_port: Annotated[
        int | None, typer.Option(help="management API port [8081]; 0 = any free, -1 = off")
    ] = None,
    management_host: Annotated[str | None, typer.Option(help="[127.0.0.1]")] = None,
    public_management: Annotated[
        bool, typer.Option(help="allow the management API on a non-loopback address")
    ] = False,
    trust_code: Annotated[
        bool,
        typer.Option(
            "--trust-code",
            help="allow archives whose format runs code (torch eager model.py, TorchScript)",
        ),
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(help="worker processes on the port; 0 = auto (README: Worker processes)"),
    ] = None,
    placement: Annotated[
        str | None,
        typer.Option(
            help="per-worker (a copy of each model in each worker), shared (one engine "
            "process holds it for all) or auto (shared on a GPU) [auto]"
        ),
    ] = None,
) -> None:
    """Serve archives or registered models over HTTP (KServe v2, native, /metrics)."""
    from modelhost.api.server import serve as run
    from modelhost.api.startup import ServeHooks
    from modelhost.serving import LoadReport

    settings = settings_from(
        host=host, port=port, device=device, instances=instances, max_batch_size=max_batch_size,
        max_batch_delay_ms=max_batch_delay_ms, log_level=log_level, home=home,
        management_port=management_port, management_host=management_host,
        public_management=public_management or None, trust_code=trust_code or None,
        workers=workers, placement=placement,
    )  # fmt: skip
    first: list[LoadReport] = []

    def starting(url: str) -> None:
        out.print(f"listening on {url}  (loading; ready once it says serving)", highlight=False)

    def loaded(report: LoadReport) -> None:
        first.append(report)
        out.print(
            f"loaded {report.name}:{report.version}  runtime={report.runtime}  "
            f"device={report.device}  instances={report.instances}  "
            f"load {report.load_s * 1e3:.0f} ms  warm-up {report.warmup_s * 1e3:.1f} ms",
            highlight=False,
        )
        if report.runs_code:
            warn(
                f"{report.name}:{report.version} runs its author's {report.runtime} code in "
                f"this server (allowed by --trust-code; archive sha256 {report.sha256})"
            )

    def serving(url: str) -> None:
        out.print(f"serving on {url}  (Ctrl-C to stop)", highlight=False)
        if first:
            report = first[0]
            predict = f"{url}/v1/models/{report.name}:predict"
            hint = {  # an image model takes a PNG, a text model strings; any model's tensors
                "image": f"curl -s -H 'Content-Type: image/png' --data-binary @IMAGE.png {predict}",
                "text": f"""curl -s -d '{{"instances": ["Hello, world"]}}' """
                f"-H 'Content-Type: application/json' {predict}",
                "tabular": f"curl -s -H 'Content-Type: text/csv' --data-binary @ROWS.csv {predict}"
                "  (a header row naming the features, then rows)",
            }.get(
                report.takes,
                f"curl -s {url}/v2/models/{report.name}  (its input and output tensors)",
            )
            out.print(f"try: {hint}", highlight=False, soft_wrap=True)

    def warn(message: str) -> None:
        err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)

    def event(message: str) -> None:
        out.print(message, highlight=False, soft_wrap=True)

    def management(url: str, token_file: Path) -> None:
        out.print(f"management API on {url}  (bearer token in {token_file})", highlight=False)
        if settings.public_management:
            err.print(
                f"[yellow]warning:[/] the management API listens on {url}, beyond this "
                "machine; anyone with the token can load models",
                highlight=False,
            )

    from modelhost.cli.server_registry import ServerRegistry

    if models:
        sources, restore = _sources(models, settings), None
    else:
        sources, restore = _restored_sources(settings)
    uses_registry = any(s.origin == "registry" for s in sources)
    registry = ServerRegistry(settings, uses_registry=uses_registry)
    hooks = ServeHooks(listening=starting, loaded=loaded, management=management,
                       serving=serving, event=event, warning=warn)  # fmt: skip
    try:
        run(settings, sources, hooks, registry=registry, after_load=restore)
    finally:
        registry.close()
    out.print("stopped")


def _restored_sources(settings: Any) -> tuple[list[Any], Any]:
    """What the registry says this server served last, and a step restoring split and scale.

    Raises:
        ConfigError: nothing is recorded for this server.
    """
    import dataclasses

    from modelhost.cli.server_registry import registry_source

    with registry_for(settings) as registry:
        served = registry.served(settings.server_name)
        if not served:
            raise ConfigError(
                f"nothing to serve: give archives or registered names (the registry has no "
                f"record of server {settings.server_name!r})"
            )
        sources = [
            dataclasses.replace(
                registry_source(registry, f"{s.model}:{s.version}"), default=s.is_default
            )
            for s in served
        ]

    from modelhost.serving import VersionState, apply_routing

    wanted = [
        VersionState(s.model, s.version, "registry", s.is_default, s.weight, s.instances)
        for s in served
    ]

    async def restore(models: Any) -> None:
        await apply_routing(models, wanted)

    return sources, restore


def _sources(models: list[str], settings: Any) -> list[Any]:
    """Archive files as they are; other arguments are looked up in the registry.

    ``NAME`` (the production version) becomes the default version of its name; a pinned
    ``NAME:VERSION`` does not.
    """
    from modelhost.cli.server_registry import registry_source
    from modelhost.serving import ArchiveSource

    sources: list[ArchiveSource] = []
    registry = None
    for model in models:
        if Path(model).is_file() or model.endswith(".mh"):
            sources.append(ArchiveSource(Path(model)))
            continue
        registry = registry or registry_for(settings)
        sources.append(registry_source(registry, model))
    if registry is not None:
        registry.close()
    return sources


@app.command()
@friendly
def predict(
    images: Annotated[list[Path], typer.Argument(help="PNG or JPEG files")],
    model: Annotated[str, typer.Option(help="model name")],
    url: Annotated[str, typer.Option(help="server URL")] = "http://127.0.0.1:8080",
    version: Annotated[str | None, typer.Option(help="model version [default]")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print raw JSON answers")] = False,
) -> None:
    """Send images to a server and print the predictions."""
    import httpx

    from modelhost.client import Client
    from modelhost.client.http import image_content_type

    with Client(url) as client:
        for path in images:
            try:
                kind, data = image_content_type(path), path.read_bytes()
            except (ValueError, OSError) as exc:
                raise ConfigError(str(exc)) from exc
            try:
                answer = client.predict_image(model, data, kind, version)
            except httpx.TransportError as exc:
                raise ConfigError(f"cannot reach the server at {url}: {exc}") from exc
            if as_json:
                out.print(json.dumps(answer), highlight=False, soft_wrap=True)
                continue
            for pred in answer["predictions"]:
                ranked = ", ".join(f"{t['label']} {t['score']:.3f}" for t in pred.get("top_k", []))
                out.print(f"{path}: {pred['label']}  (score {pred['score']:.3f}; top: {ranked})",
                          highlight=False)  # fmt: skip
