"""The ``modelhost`` command: parse, call one library function, print."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from modelhost.errors import ConfigError, ModelhostError

app = typer.Typer(
    name="modelhost",
    help="Train, pack, serve and call AI models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

HomeOption = Annotated[Path | None, typer.Option("--home", help="modelhost home [~/.modelhost]")]
P = ParamSpec("P")
R = TypeVar("R")


def _friendly(fn: Callable[P, R]) -> Callable[P, R]:
    """Print modelhost errors as one red line and exit 1 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ModelhostError as exc:
            err.print(f"[bold red]error:[/] {exc.message}", highlight=False)
            raise typer.Exit(1) from exc

    return wrapper


def _settings(**overrides: Any) -> Any:
    from modelhost.config import Settings, unknown_env_settings

    for name in unknown_env_settings():
        err.print(
            f"[yellow]warning:[/] {name} is not a modelhost setting; ignored", highlight=False
        )
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"setting {first['loc'][0]}: {first['msg']}") from exc


@app.command()
@_friendly
def train(
    recipe: Annotated[str, typer.Argument(help="what to train: digits-cnn")],
    out_dir: Annotated[Path, typer.Option("--out", help="directory for the trained model")],
    epochs: Annotated[int, typer.Option(help="passes over the training data")] = 12,
    seed: Annotated[int, typer.Option(help="random seed (same seed, same weights)")] = 0,
) -> None:
    """Train a model recipe on its bundled data set."""
    if recipe != "digits-cnn":
        raise ConfigError(f"unknown recipe {recipe!r}; available: digits-cnn")
    from modelhost.train.digits import train_digits

    report = train_digits(out_dir, epochs=epochs, seed=seed, console=out)
    out.print(
        f"test accuracy {report.test_accuracy:.4f} in {report.duration_s:.1f} s; "
        f"wrote {out_dir} (pack it: modelhost pack {out_dir} --name digits --version 1 "
        "--out digits.mh)"
    )


@app.command()
@_friendly
def pack(
    model_dir: Annotated[Path, typer.Argument(help="trained model directory")],
    name: Annotated[str, typer.Option(help="model name")],
    version: Annotated[str, typer.Option(help="model version")],
    out_file: Annotated[Path, typer.Option("--out", help="archive to write (.mh)")],
) -> None:
    """Pack a trained model directory into one verified archive."""
    from modelhost.archive import pack_model_dir

    manifest = pack_model_dir(model_dir, name=name, version=version, out=out_file)
    out.print(
        f"packed {manifest.name}:{manifest.version} ({len(manifest.files)} files) -> {out_file}"
    )


@app.command()
@_friendly
def inspect(
    archive: Annotated[Path, typer.Argument(help="archive (.mh)")],
    as_json: Annotated[bool, typer.Option("--json", help="print the manifest as JSON")] = False,
) -> None:
    """Verify an archive and print its manifest."""
    import tempfile

    from modelhost.archive import open_archive

    with tempfile.TemporaryDirectory(prefix="modelhost-inspect-") as tmp:
        opened = open_archive(archive, Path(tmp))
    m = opened.manifest
    if as_json:
        out.print_json(m.model_dump_json())
        return
    out.print(f"[bold]{m.name}:{m.version}[/]  runtime={m.runtime}  task={m.task}  "
              f"created {m.created_at:%Y-%m-%d %H:%M:%S %Z}")  # fmt: skip
    out.print(f"archive sha256 {opened.sha256}  (all {len(m.files)} file digests verified)")
    sig = Table("", "name", "dtype", "shape", title="signature", title_justify="left")
    for kind, specs in (("input", m.inputs), ("output", m.outputs)):
        for s in specs:
            sig.add_row(kind, s.name, s.dtype, str(list(s.shape)))
    out.print(sig)
    if m.labels:
        out.print(f"labels: {', '.join(m.labels)}")
    if m.preprocessing:
        out.print(f"preprocessing: {m.preprocessing.model_dump()}")
    b = m.batching
    out.print(f"batching: max_batch_size={b.max_batch_size} max_batch_delay_ms="
              f"{b.max_batch_delay_ms} max_queue={b.max_queue}")  # fmt: skip
    if m.metrics:
        out.print("metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(m.metrics.items())))
    files = Table("file", "bytes", "sha256", title="files", title_justify="left")
    for name, entry in sorted(m.files.items()):
        files.add_row(name, str(entry.size), entry.sha256[:16] + "…")
    out.print(files)


@app.command()
@_friendly
def export(
    archive: Annotated[Path, typer.Argument(help="torch archive (.mh)")],
    to: Annotated[str, typer.Option(help="onnx or torchscript")],
    out_file: Annotated[Path, typer.Option("--out", help="archive to write (.mh)")],
    atol: Annotated[float, typer.Option(help="largest output difference accepted")] = 1e-4,
) -> None:
    """Export a torch archive to ONNX or TorchScript (outputs checked against torch)."""
    from modelhost.optimize.export import export_archive

    if to not in ("onnx", "torchscript"):
        raise ConfigError(f"--to {to!r} is not supported; use onnx or torchscript")
    report = export_archive(archive, out_file, to, atol=atol)  # type: ignore[arg-type]
    m = report.manifest
    out.print(f"exported {m.name}:{m.version} to {m.runtime} -> {out_file} "
              f"(max |Δ| vs torch {report.max_abs_diff:.2e})")  # fmt: skip


@app.command()
@_friendly
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
) -> None:
    """Serve archives or registered models over HTTP (KServe v2, native, /metrics)."""
    from modelhost.api.server import serve as run
    from modelhost.serving import ModelInfo

    settings = _settings(
        host=host, port=port, device=device, instances=instances, max_batch_size=max_batch_size,
        max_batch_delay_ms=max_batch_delay_ms, log_level=log_level, home=home,
        management_port=management_port, management_host=management_host,
        public_management=public_management or None,
    )  # fmt: skip
    first: list[str] = []

    def loaded(info: ModelInfo) -> None:
        first.append(info.name)
        out.print(
            f"loaded {info.name}:{info.version}  runtime={info.manifest.runtime}  "
            f"device={info.device}  instances={info.instances}  "
            f"load {info.load_s * 1e3:.0f} ms  warm-up {info.warmup_s * 1e3:.1f} ms",
            highlight=False,
        )

    def listening(url: str) -> None:
        out.print(f"serving on {url}  (Ctrl-C to stop)", highlight=False)
        if first:
            out.print(
                f"try: curl -s -H 'Content-Type: image/png' --data-binary @IMAGE.png "
                f"{url}/v1/models/{first[0]}:predict",
                highlight=False, soft_wrap=True,
            )  # fmt: skip

    def management(url: str, token_file: Path) -> None:
        out.print(f"management API on {url}  (bearer token in {token_file})", highlight=False)
        if settings.public_management:
            err.print(
                f"[yellow]warning:[/] the management API listens on {url}, beyond this "
                "machine; anyone with the token can load models",
                highlight=False,
            )

    def resolve(ref: str) -> Any:
        with _registry(settings) as registry:
            return _registry_source(registry, ref)

    def audit(actor: str, action: str, target: str, outcome: str, detail: str) -> None:
        with _registry(settings) as registry:
            registry.record(actor, action, target, outcome, detail)

    if models:
        sources, restore = _sources(models, settings), None
    else:
        sources, restore = _restored_sources(settings)
    uses_registry = any(s.origin == "registry" for s in sources)

    def persist(states: list[Any]) -> None:
        from modelhost.registry.service import ServedVersion

        kept = [s for s in states if s.origin == "registry"]
        if not (uses_registry or kept):
            return  # archive files only: nothing the registry could restore
        with _registry(settings) as registry:
            registry.save_served(
                settings.server_name,
                [
                    ServedVersion(s.name, s.version, s.is_default, s.weight, s.instances)
                    for s in kept
                ],
            )

    run(
        settings, sources, on_loaded=loaded, on_listening=listening, on_management=management,
        resolve=resolve, audit=audit, persist=persist, after_load=restore,
    )  # fmt: skip
    out.print("stopped")


def _registry_source(registry: Any, ref: str) -> Any:
    """A registry ``NAME[:VERSION]`` as an ArchiveSource; ``NAME`` becomes the default."""
    from modelhost.registry.service import parse_ref
    from modelhost.serving import ArchiveSource
    from modelhost.types import ModelRef

    name, version = parse_ref(ref)
    info = registry.show(name, version)
    path = registry.archive_path(name, info.version)
    return ArchiveSource(path, ModelRef(name, info.version), version is None, origin="registry")


def _restored_sources(settings: Any) -> tuple[list[Any], Any]:
    """What the registry says this server served last, and a step restoring split and scale.

    Raises:
        ConfigError: nothing is recorded for this server.
    """
    from modelhost.types import ModelRef

    with _registry(settings) as registry:
        served = registry.served(settings.server_name)
        if not served:
            raise ConfigError(
                f"nothing to serve: give archives or registered names (the registry has no "
                f"record of server {settings.server_name!r})"
            )
        from modelhost.serving import ArchiveSource

        sources = [
            ArchiveSource(
                registry.archive_path(s.model, s.version), ModelRef(s.model, s.version),
                s.is_default, origin="registry",
            )
            for s in served
        ]  # fmt: skip

    async def restore(engine: Any) -> None:
        for s in served:
            if s.instances > 1:
                await engine.scale(s.model, s.version, s.instances)
        for name in sorted({s.model for s in served}):
            weights = {s.version: s.weight for s in served if s.model == name and s.weight > 0}
            if weights:
                engine.set_split(name, weights)

    return sources, restore


def _sources(models: list[str], settings: Any) -> list[Any]:
    """Archive files as they are; other arguments are looked up in the registry.

    ``NAME`` (the production version) becomes the default version of its name; a pinned
    ``NAME:VERSION`` does not.
    """
    from modelhost.serving import ArchiveSource

    sources: list[ArchiveSource] = []
    registry = None
    for model in models:
        if Path(model).is_file() or model.endswith(".mh"):
            sources.append(ArchiveSource(Path(model)))
            continue
        registry = registry or _registry(settings)
        sources.append(_registry_source(registry, model))
    if registry is not None:
        registry.close()
    return sources


@app.command()
@_friendly
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


def _registry(settings: Any) -> Any:
    from modelhost.registry import LocalArtifactStore, Registry
    from modelhost.registry.db import open_database, sqlite_url

    url = settings.db_url or sqlite_url(settings.home)
    return Registry(open_database(url), LocalArtifactStore(settings.home / "artifacts"))


def _actor() -> str:
    import getpass

    return f"cli:{getpass.getuser()}"


@app.command()
@_friendly
def push(
    archive: Annotated[Path, typer.Argument(help="archive (.mh)")], home: HomeOption = None
) -> None:
    """Verify an archive and register it as the next version of its model."""
    info = _registry(_settings(home=home)).push(archive, _actor())
    out.print(
        f"pushed {info.name}:{info.version} (sha256 {info.archive_sha256[:16]}…)", highlight=False
    )


@app.command(name="ls")
@_friendly
def list_models(home: HomeOption = None) -> None:
    """List the registered models."""
    table = Table("model", "versions", "latest", "production")
    for m in _registry(_settings(home=home)).models():
        table.add_row(m.name, str(m.versions), m.latest, m.production or "-")
    out.print(table)


@app.command()
@_friendly
def show(
    ref: Annotated[str, typer.Argument(help="NAME or NAME:VERSION")], home: HomeOption = None
) -> None:
    """Show a registered version: manifest summary, metrics, stage history."""
    from modelhost.registry.service import parse_ref

    name, version = parse_ref(ref)
    info = _registry(_settings(home=home)).show(name, version)
    out.print(f"[bold]{info.name}:{info.version}[/]  stage={info.stage}  runtime={info.runtime}  "
              f"{info.size_bytes} bytes  pushed {info.created_at:%Y-%m-%d %H:%M:%S}")  # fmt: skip
    out.print(f"archive sha256 {info.archive_sha256}", highlight=False)
    if info.metrics:
        out.print("metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(info.metrics.items())))
    for change in info.history:
        out.print(
            f"  {change.at:%Y-%m-%d %H:%M:%S}  {change.from_stage} -> {change.to_stage}"
            f"  by {change.actor}"
        )


@app.command()
@_friendly
def promote(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION")],
    stage: Annotated[str, typer.Argument(help="production, staging, archived or none")],
    home: HomeOption = None,
) -> None:
    """Move a version to a stage (a new production version archives the old one)."""
    from modelhost.registry.service import parse_ref

    name, version = parse_ref(ref)
    if version is None:
        raise ConfigError(f"{ref!r}: say which version, NAME:VERSION")
    info = _registry(_settings(home=home)).promote(name, version, stage, _actor())
    out.print(f"{info.name}:{info.version} is now {info.stage}", highlight=False)


@app.command()
@_friendly
def rm(ref: Annotated[str, typer.Argument(help="NAME:VERSION")], home: HomeOption = None) -> None:
    """Remove a registered version (and its archive when no other version shares it)."""
    from modelhost.registry.service import parse_ref

    name, version = parse_ref(ref)
    if version is None:
        raise ConfigError(f"{ref!r}: say which version, NAME:VERSION")
    _registry(_settings(home=home)).remove(name, version, _actor())
    out.print(f"removed {name}:{version}", highlight=False)


@app.command()
@_friendly
def audit(
    limit: Annotated[int, typer.Option(help="newest entries to show")] = 50,
    home: HomeOption = None,
) -> None:
    """Show the audit log, newest first."""
    table = Table("when", "who", "action", "target", "outcome", "detail")
    for e in _registry(_settings(home=home)).audit(limit):
        table.add_row(f"{e.at:%Y-%m-%d %H:%M:%S}", e.actor, e.action, e.target, e.outcome, e.detail)
    out.print(table)


def main() -> None:
    """Entry point of the ``modelhost`` script."""
    app()
