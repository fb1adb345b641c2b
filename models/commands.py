"""The engine's command line: `deeproom inspect MODEL`, `deeproom analyze ...` and
`deeproom bench engine`. Light at import time: torch loads only when a command runs."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def register(commands: Any, bench: Any) -> None:
    p = commands.add_parser("inspect", help="print a model's layers, parameter counts and tensor shapes")
    p.add_argument("model", help="ONNX, TorchScript, torch.export (.pt2) or state-dict file, or a zoo name "
                   "(digits_cnn, tiny_resnet, tiny_vit)")
    p.add_argument("--arch", help="architecture for a state dict (a zoo name)")
    p.add_argument("--input-shape", help="example input shape, e.g. 1,3,32,32 (for output shapes)")
    p.add_argument("--graph", action="store_true", help="also print the graph summary (nodes, edges, skips, groups)")
    p.set_defaults(func=cmd_inspect)

    p = commands.add_parser("analyze", help="compute one analysis of a model into a content blob file")
    p.add_argument("model")
    p.add_argument("analysis", help="graph, feature_maps, filters, gradcam, gradcam++, scorecam, attention, "
                   "confusion_matrix, latent_cloud, feature_visualization")
    p.add_argument("--layer")
    p.add_argument("--dataset", default="digits", help="'digits', an image folder, .npz or IDX file")
    p.add_argument("--index", type=int, default=0, help="which sample (per-image analyses)")
    p.add_argument("--target", type=int, help="target class (default: the prediction)")
    p.add_argument("--method", default="tsne", help="embedding method: pca, tsne, umap")
    p.add_argument("--dims", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch")
    p.add_argument("-o", "--output", help="where to write the blob (default: print its summary only)")
    p.set_defaults(func=cmd_analyze)

    b = bench.add_parser("engine", help="ONNX round-trip error and conformance, graph extraction, Grad-CAM and "
                         "activation cost ratios, t-SNE vs scikit-learn")
    b.add_argument("--quick", action="store_true", help="smaller sizes (for tests)")
    b.set_defaults(func=cmd_bench_engine)


def _load(spec: str, arch: str | None, input_shape: tuple[int, ...] | None = None) -> Any:
    from deeproom.models.loading import load_model
    from deeproom.models.zoo import ZOO

    if spec in ZOO:
        import torch

        torch.manual_seed(0)
        return load_model(ZOO[spec](), name=spec, input_shape=input_shape)
    return load_model(spec, architecture=arch, input_shape=input_shape)


def _shape(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    from deeproom.errors import ValidationError

    try:
        dims = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise ValidationError(f"--input-shape must be integers like 1,3,32,32; got {text!r}") from None
    if not dims or any(d <= 0 for d in dims):
        raise ValidationError(f"--input-shape must be positive integers; got {text!r}")
    return dims


def cmd_inspect(args: argparse.Namespace, config: Any) -> int:
    from deeproom.models.loading import describe_export_layers, describe_layers

    loaded = _load(args.model, args.arch, _shape(args.input_shape))
    rows = describe_export_layers(loaded) if loaded.kind == "export" else describe_layers(loaded)
    total = sum(p.numel() for p in loaded.module.parameters())
    print(f"{loaded.name}: {loaded.kind} model, {len(rows)} layers, {total:,} parameters, "
          f"input {list(loaded.input_shape) if loaded.input_shape else 'unknown'}")
    width = max((len(r.name) for r in rows), default=10)
    print(f"{'layer':<{width}}  {'type':<22} {'params':>10}  output shape")
    for r in rows:
        shape = "×".join(str(d) for d in r.output_shape) if r.output_shape else "?"
        print(f"{r.name:<{width}}  {r.type:<22} {r.params:>10,}  {shape}")
    if "shape_error" in loaded.extra:
        print(f"(shapes unavailable: {loaded.extra['shape_error']})")
    if args.graph:
        from deeproom.models.graph import extract_graph

        g = extract_graph(loaded)
        print(f"graph ({g.source}): {len(g.nodes)} nodes, {len(g.edges)} edges, {len(g.skip_edges())} skip/branch "
              f"edges, {len(g.groups)} groups, {max((n.rank for n in g.nodes), default=0) + 1} ranks, "
              f"{g.seconds * 1000:.1f} ms")
    return 0


def cmd_analyze(args: argparse.Namespace, config: Any) -> int:
    from deeproom.content import decode_content
    from deeproom.models.datasets import load_dataset
    from deeproom.models.jobs import JobRunner, ResultCache, progress_bar
    from deeproom.models.tasks import submit_analysis

    loaded = _load(args.model, args.arch)
    dataset = load_dataset(args.dataset) if args.dataset else None
    params: dict[str, Any] = {"index": args.index, "method": args.method, "dims": args.dims}
    if args.layer:
        params["layer"] = args.layer
    if args.target is not None:
        params["target"] = args.target
    cache = ResultCache(config.data_dir / "engine-cache")
    with JobRunner(cache=cache) as runner:
        job = submit_analysis(runner, loaded, args.analysis, params, dataset=dataset, seed=args.seed,
                              on_progress=progress_bar(args.analysis))
        try:
            blob = job.result()
        except KeyboardInterrupt:
            job.cancel()
            raise
    meta, arrays = decode_content(blob)
    summary = ", ".join(f"{k} {a.dtype}{list(a.shape)}" for k, a in arrays.items())
    print(f"{args.analysis}: {len(blob):,} bytes{' (cached)' if job.cached else ''}; kind {meta.get('kind')}; {summary}")
    if args.output:
        with open(args.output, "wb") as f:
            f.write(blob)
        print(f"wrote {args.output}")
    return 0


def cmd_bench_engine(args: argparse.Namespace, config: Any) -> int:
    from deeproom.bench import emit
    from deeproom.models.bench import run_engine_bench

    emit(run_engine_bench(quick=args.quick, log=print))
    return 0


def doctor_checks() -> list[tuple[str, Callable[[], str]]]:
    def onnx_exec() -> str:
        from deeproom.models.onnx_ops import SUPPORTED_OPS

        return f"ONNX executor in torch: {len(SUPPORTED_OPS)} operators"

    return [("engine", onnx_exec)]
