"""Commands that make archives: train, pack, inspect, export, optimize."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from modelhost.cli.base import app, friendly, out
from modelhost.errors import ConfigError

_FRAMEWORKS = ("torch", "keras")


@app.command()
@friendly
def train(
    recipe: Annotated[str, typer.Argument(help="what to train: digits-cnn or credit-risk")],
    out_dir: Annotated[Path, typer.Option("--out", help="directory for the trained model")],
    framework: Annotated[
        str, typer.Option(help="torch (safetensors + model.py) or keras (.h5, torch backend)")
    ] = "torch",
    epochs: Annotated[
        int | None, typer.Option(help="passes over the training data [torch: 12, keras: 15]")
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed (same seed, same weights)")] = 0,
) -> None:
    """Train a model recipe on its bundled data set: digits-cnn (torch or keras) or
    credit-risk (scikit-learn, converted to ONNX)."""
    if recipe == "credit-risk":
        _train_credit(out_dir, seed)
        return
    if recipe != "digits-cnn":
        raise ConfigError(f"unknown recipe {recipe!r}; available: digits-cnn, credit-risk")
    if framework not in _FRAMEWORKS:
        raise ConfigError(f"--framework {framework!r} is not supported; use torch or keras")
    if framework == "keras":
        from modelhost.train.digits_keras import EPOCHS, train_digits_keras

        epochs = EPOCHS if epochs is None else epochs
        report = train_digits_keras(out_dir, epochs=epochs, seed=seed, console=out)
    else:
        from modelhost.train.digits import EPOCHS as TORCH_EPOCHS
        from modelhost.train.digits import train_digits

        epochs = TORCH_EPOCHS if epochs is None else epochs
        report = train_digits(out_dir, epochs=epochs, seed=seed, console=out)
    out.print(
        f"test accuracy {report.test_accuracy:.4f} in {report.duration_s:.1f} s; "
        f"wrote {out_dir} (pack it: modelhost pack {out_dir} --name digits --version 1 "
        "--out digits.mh)"
    )


def _train_credit(out_dir: Path, seed: int) -> None:
    from modelhost.train.credit import train_credit

    with out.status("training credit-risk (scikit-learn gradient boosting, 6,000 applicants)"):
        report = train_credit(out_dir, seed=seed)
    out.print(
        f"credit-risk: test accuracy {report.test_accuracy:.4f}, ROC AUC "
        f"{report.test_roc_auc:.4f} ({report.default_rate:.1%} defaults) in "
        f"{report.duration_s:.1f} s; wrote {out_dir} (pack it: modelhost pack {out_dir} "
        "--name credit --version 1 --out credit.mh)"
    )


@app.command()
@friendly
def pack(
    model_dir: Annotated[Path, typer.Argument(help="trained model directory")],
    name: Annotated[str, typer.Option(help="model name")],
    version: Annotated[str, typer.Option(help="model version")],
    out_file: Annotated[Path, typer.Option("--out", help="archive to write (.mh)")],
) -> None:
    """Pack a trained model directory into one verified archive."""
    from modelhost.archive import pack_model_dir
    from modelhost.runtimes.registry import check_packable

    try:
        manifest = pack_model_dir(
            model_dir,
            name=name,
            version=version,
            out=out_file,
            check=lambda spec: check_packable(spec, model_dir),
        )
    except OSError as exc:
        if exc.filename is not None:
            raise
        # zipfile's write errors name no file: the one being written is the archive.
        raise OSError(exc.errno, exc.strerror, str(out_file)) from exc
    out.print(
        f"packed {manifest.name}:{manifest.version} ({len(manifest.files)} files) -> {out_file}"
    )


@app.command("pack-hf")
@friendly
def pack_hf(
    model_dir: Annotated[Path, typer.Argument(help="Hugging Face model directory (local)")],
    name: Annotated[str, typer.Option(help="model name")],
    version: Annotated[str, typer.Option(help="model version")],
    out_file: Annotated[Path, typer.Option("--out", help="archive to write (.mh)")],
    truncate: Annotated[
        bool,
        typer.Option(
            "--truncate/--no-truncate",
            help="cut texts longer than the model's token limit (else refuse them with 400)",
        ),
    ] = True,
    shorten_to: Annotated[
        str,
        typer.Option(
            help="sizes a Matryoshka embedding model may be cut to, e.g. 256,128 "
            "(requests ask with OpenAI's dimensions)",
        ),
    ] = "",
) -> None:
    """Pack a local text model (safetensors + tokenizer.json) into an archive: a sentence
    embedding model, or a sequence classifier (labels from its config's id2label)."""
    from modelhost.archive import TextPreprocessing, write_archive
    from modelhost.runtimes.transformers import spec_of_model_dir

    sizes = tuple(_sizes(shorten_to)) if shorten_to else ()
    spec, files = spec_of_model_dir(model_dir, truncate=truncate, shorten_to=sizes)
    manifest = write_archive(spec, files, name=name, version=version, out=out_file)
    prep = manifest.preprocessing
    assert isinstance(prep, TextPreprocessing)  # spec_of_model_dir makes text archives
    limit = f"{prep.max_tokens} tokens, {'truncated' if prep.truncate else 'longer refused'}"
    if manifest.task == "classification":
        what = f"{len(manifest.labels)} labels: {', '.join(manifest.labels[:5])}"
    else:
        config = manifest.runtime_config
        what = (
            f"{config['pooling']} pooling, normalize={config['normalize']}, "
            f"{manifest.outputs[0].shape[1]} dimensions"
        )
    out.print(
        f"packed {manifest.name}:{manifest.version} ({manifest.task}; {len(manifest.files)} "
        f"files; {what}; {limit}) -> {out_file}"
    )


def _sizes(text: str) -> list[int]:
    parts = text.split(",")
    if not all(p.strip().isascii() and p.strip().isdigit() for p in parts):
        raise ConfigError(f"--shorten-to {text!r} is not a comma-separated list of sizes")
    return [int(p) for p in parts]


@app.command("pack-keras")
@friendly
def pack_keras(
    model_file: Annotated[Path, typer.Argument(help="Keras model file (.keras or .h5)")],
    name: Annotated[str, typer.Option(help="model name")],
    version: Annotated[str, typer.Option(help="model version")],
    out_file: Annotated[Path, typer.Option("--out", help="archive to write (.mh)")],
    labels: Annotated[
        str | None, typer.Option(help="class names of a classifier, comma-separated")
    ] = None,
    image: Annotated[
        bool,
        typer.Option(
            "--image/--no-image",
            help="the model takes images: PNG/JPEG requests, resized to its input's size "
            "(channels-last or -first, read from its shape)",
        ),
    ] = False,
    image_scale: Annotated[
        float, typer.Option(help="with --image: pixels 0..255 are multiplied by this")
    ] = 1 / 255,
) -> None:
    """Pack a Keras 3 model file (built-in layers only) into an archive."""
    from modelhost.archive import write_archive
    from modelhost.runtimes.keras import spec_of_keras_file

    names = tuple(label.strip() for label in labels.split(",")) if labels else ()
    scale = image_scale if image else None
    spec, files = spec_of_keras_file(model_file, labels=names, image_scale=scale)
    manifest = write_archive(spec, files, name=name, version=version, out=out_file)
    signature = ", ".join(f"{s.name} {list(s.shape)}" for s in manifest.inputs)
    out.print(
        f"packed {manifest.name}:{manifest.version} ({manifest.task}; {signature} -> "
        f"{', '.join(o.name for o in manifest.outputs)}) -> {out_file}"
    )


@app.command()
@friendly
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
@friendly
def export(
    archive: Annotated[Path, typer.Argument(help="torch archive (.mh)")],
    to: Annotated[str, typer.Option(help="onnx or torchscript")],
    out_file: Annotated[Path, typer.Option("--out", help="archive to write (.mh)")],
    atol: Annotated[float, typer.Option(help="largest output difference accepted")] = 1e-4,
    trust_code: Annotated[
        bool, typer.Option("--trust-code", help="run the archive's model.py (needed: it is code)")
    ] = False,
) -> None:
    """Export a torch archive to ONNX or TorchScript (outputs checked against torch)."""
    from modelhost.optimize.export import export_archive

    if to not in ("onnx", "torchscript"):
        raise ConfigError(f"--to {to!r} is not supported; use onnx or torchscript")
    if not trust_code:
        from modelhost.errors import UntrustedCode

        raise UntrustedCode(
            f"exporting {archive} imports its model.py, code of the archive's author; pass "
            "--trust-code if you trust its author"
        )
    report = export_archive(archive, out_file, to, atol=atol)  # type: ignore[arg-type]
    m = report.manifest
    out.print(f"exported {m.name}:{m.version} to {m.runtime} -> {out_file} "
              f"(max |Δ| vs torch {report.max_abs_diff:.2e})")  # fmt: skip


@app.command()
@friendly
def optimize(
    archive: Annotated[Path, typer.Argument(help="torch, transformers or onnx archive (.mh)")],
    to: Annotated[str, typer.Option(help="target format (onnx)")] = "onnx",
    quantize: Annotated[
        str | None, typer.Option(help="int8 (dynamic quantization) or fp16")
    ] = None,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="archive to write (default: NAME-opt.mh beside it)")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="held-out inputs: .npz of input arrays, or .txt (a text per line)"),
    ] = None,
    min_agreement: Annotated[
        float, typer.Option(help="least top-1 agreement with the original (classifiers)")
    ] = 0.99,
    min_cosine: Annotated[
        float, typer.Option(help="least mean cosine similarity (embedding models)")
    ] = 0.99,
    max_error: Annotated[
        float, typer.Option(help="largest absolute output difference (other models)")
    ] = 1e-2,
    graph_optimization: Annotated[
        str, typer.Option(help="onnxruntime graph optimizations: disabled|basic|extended|all")
    ] = "all",
    force: Annotated[
        bool, typer.Option(help="write the archive even below the thresholds")
    ] = False,
    trust_code: Annotated[
        bool, typer.Option("--trust-code", help="run a torch archive's model.py (it is code)")
    ] = False,
) -> None:
    """Export to ONNX (optionally quantized), check the answers against the original on
    held-out data, time both, and write the new archive if the quality holds."""
    from modelhost.config import Settings
    from modelhost.optimize.optimizer import optimize_archive
    from modelhost.optimize.quality import Thresholds
    from modelhost.serving.config import engine_config
    from modelhost.serving.loader import load_options

    if to != "onnx":
        raise ConfigError(f"--to {to!r} is not supported; optimize exports to onnx")
    if quantize not in (None, "int8", "fp16"):
        raise ConfigError(f"--quantize {quantize!r} is not supported; use int8 or fp16")
    target = out_file or archive.with_name(f"{archive.stem}-opt.mh")
    thresholds = Thresholds(min_agreement, min_cosine, max_error)
    with out.status("optimizing") as status:
        report = optimize_archive(
            archive, target, quantize_to=quantize, data=data, thresholds=thresholds,  # type: ignore[arg-type]
            force=force, trust_code=trust_code, graph_optimization=graph_optimization,
            options=load_options(engine_config(Settings()), device="cpu"),
            progress=lambda line: status.update(line),
        )  # fmt: skip
    table = Table("", "original", "optimized", "change", title=report.title())
    for row in report.rows():
        table.add_row(*row)
    out.print(table)
    if report.synthetic_data:
        out.print(f"[yellow]note:[/] checked on {report.data}; pass --data for real held-out data")
    if report.manifest is None:
        raise ConfigError(
            "the optimized model misses the quality threshold ("
            + "; ".join(report.failures)
            + "): nothing written; lower the threshold or pass --force"
        )
    forced = " (forced past: " + "; ".join(report.failures) + ")" if report.failures else ""
    out.print(f"wrote {target}{forced}")
