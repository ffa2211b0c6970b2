"""pmsm-compile: quantized ANN (ONNX) → stateful SNN (ONNX), verified at T = 1 on every compile."""

from __future__ import annotations

import json
import os
import sys
import time

import click

from pmsm_compiler import __version__
from pmsm_compiler.cli.options import (NORMAL, VERBOSE, check_threads, command, json_option, mode_options,
                                       parse_providers, resolve_mode, session_options, verbosity)
from pmsm_compiler.errors import VerificationError, cli_errors
from pmsm_compiler.limits import MAX_OPSET, MAX_TENSOR_BYTES, MIN_OPSET, format_bytes

REPORT_SCHEMA_VERSION = 1


def default_output(path: str) -> str:
    base = path[:-5] if path.endswith(".onnx") else path
    return base + ".snn.onnx"


def layer_table(layers, verification=None) -> str:
    by_name = {p["name"]: p for p in (verification or {}).get("layers", [])}
    head = f"{'layer':<24} {'neuron':<6} {'neurons':>8} {'theta':>9} {'s_min':>5} {'s_max':>5} {'fan_out':>8}"
    if verification:
        head += f" {'level agreement':>16}"
    lines = [head, "-" * len(head)]
    for layer in layers:
        fan = f"{layer.fan_out:.1f}" if layer.fan_out is not None else "?"
        row = (f"{layer.name[:24]:<24} {layer.neuron:<6} {layer.neurons or 0:>8} "
               f"{layer.theta:>9.4g} {layer.s_min:>5} {layer.s_max:>5} {fan:>8}")
        if verification and layer.name in by_name:
            p = by_name[layer.name]
            mark = "" if p["in_policy"] else (" (after an IF layer)" if p.get("after_lossy_layer") else " (lossy: IF)")
            row += f" {p['level_agreement']:>16.6f}{mark}"
        lines.append(row)
    return "\n".join(lines)


HELP = f"""Compile MODEL (an ONNX model with PQA / QCFS / QDQ activations) into a spiking model.

MODEL: default-domain ONNX opset {MIN_OPSET} to {MAX_OPSET} (an older one is converted to {MIN_OPSET} and the conversion
checked), one data input (float, or uint8 images that
the model scales itself), no tensor over {format_bytes(MAX_TENSOR_BYTES).split(' (')[0]} (a dynamic batch
counted as 1).
"""


@command("pmsm-compile", help=HELP)
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("-o", "--output", type=click.Path(), help="Output path (default: MODEL with .snn.onnx).")
@mode_options()
@click.option("--check/--no-check", default=True, show_default=True, help="Verify the SNN at T=1 against the ANN.")
@click.option("--calibration-data", type=click.Path(), help="Verify on real data (.npz, .npy, CIFAR folder, "
              "image folder, or 'bundled') instead of seeded random inputs.")
@click.option("--samples", default=64, show_default=True, help="Inputs used by the verification.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random verification inputs.")
@click.option("--normalization", default="auto", show_default=True,
              help="For uint8 calibration images: auto (model metadata, else cifar10), cifar10, cifar100, "
                   "imagenet, none.")
@session_options
@click.option("--max-level-mismatch", default=1e-2, show_default=True,
              help="Folded mode: largest accepted level-mismatch rate over all AIF layers.")
@click.option("--min-top1-agreement", default=0.98, show_default=True,
              help="Folded mode: smallest accepted top-1 agreement between ANN and SNN.")
@click.option("--output-rtol", default=1e-4, show_default=True,
              help="Both modes: largest accepted |SNN - ANN tail fed the SNN's own levels|, relative to the "
                   "largest output magnitude (checks the arithmetic after the last neurons).")
@json_option("Write the JSON report here (docs/report-schema.md); --report is the same.", "--report")
@click.option("--max-bytes", default=None, type=int,
              help="Refuse models larger than this: the file, and the file plus its external data "
                   "(default: 2 GiB and 16 GiB).")
@click.option("--external-data/--no-external-data", default=None,
              help="Write the SNN's weights to OUTPUT.data beside it (default: when the SNN is 2 GiB or more, "
                   "which one ONNX file cannot hold).")
@click.option("--input-shape", multiple=True, metavar="NAME:DIMS",
              help="Fix an input's shape, e.g. x:1x3x32x32 (polygraphy/onnxsim style; a name such as N keeps the "
                   "batch dynamic): for models exported with dynamic height/width. Repeatable.")
@verbosity(verbose_help="Also the time of every pass and the compiler's notes; -vv also lets the libraries' own "
                        "warnings through.")
@cli_errors
def main(model, output, mode, exact, check, calibration_data, samples, seed, normalization, providers, opt_level,
         threads, max_level_mismatch, min_top1_agreement, output_rtol, json_path, max_bytes, external_data, input_shape,
         verbosity):
    """See HELP."""
    from pmsm_compiler import opset_upgrade
    from pmsm_compiler.errors import InputError
    from pmsm_compiler.metadata import get_metadata
    from pmsm_compiler.files import check_output_path, save_text_atomic
    from pmsm_compiler.loading import external_data_path, parse_input_shape
    from pmsm_compiler.pipeline import check_sampling, compile_and_verify
    from pmsm_compiler.process_memory import keep_freed_memory, peak_memory_bytes
    from pmsm_compiler.verify import VerificationPolicy

    check_sampling(samples, seed)
    check_threads(threads)
    provider_list = parse_providers(providers)
    mode = resolve_mode(mode, exact)
    output = output or default_output(model)
    if os.path.abspath(output) == os.path.abspath(model):
        raise InputError("the output path must differ from the input model")
    check_output_path(output, "the compiled model")
    if external_data:
        check_output_path(external_data_path(output), "the compiled model's external data")
    if json_path:
        check_output_path(json_path, "the report")
    start = time.perf_counter()
    keep_freed_memory()  # this process compiles one model and ends: freed copies of the weights serve the next
    shapes = dict(parse_input_shape(text) for text in input_shape)
    result = compile_and_verify(model, mode, check=check, data=calibration_data, samples=samples, seed=seed,
                                normalization=normalization, opt_level=opt_level,
                                policy=VerificationPolicy(max_level_mismatch, min_top1_agreement, output_rtol),
                                max_bytes=max_bytes, input_shapes=shapes, providers=provider_list, threads=threads,
                                output=output, external_data=external_data,
                                keep_weights=False)  # its report and messages read the input's structure only
    info, verification = result.info, result.verification
    elapsed = time.perf_counter() - start
    report = {
        "schema_version": REPORT_SCHEMA_VERSION, "tool": "pmsm-compile", "compiler_version": __version__,
        "input": os.path.abspath(model), "output": None, "output_data": None, "mode": mode, "compile_seconds": info.compile_seconds,
        "total_seconds": round(elapsed, 3), "phase_seconds": dict(result.phase_seconds),
        "ann_macs": info.ann_macs, "time_input": info.time_input,
        "verification": {k: v for k, v in verification.items() if k != "layers"},
        "layers": _report_layers(info, verification), "wrappers": [w.to_json() for w in info.wrappers],
        "notes": info.notes,
        "peak_memory_bytes": peak_memory_bytes(),
    }
    passed = result.passed
    if result.saved:
        report["output"] = os.path.abspath(output)
        report["output_data"] = os.path.abspath(external_data_path(output)) if result.external_data else None
    if json_path:
        save_text_atomic(json.dumps(report, indent=1) + "\n", json_path)
    if verbosity >= NORMAL:
        upgraded = get_metadata(result.ann, opset_upgrade.METADATA_KEY)
        converted = f", converted from opset {upgraded['from']} to {upgraded['to']}" if isinstance(upgraded, dict) else ""
        click.echo(f"pmsm-compile {__version__}: {model} ({mode} mode, {len(info.layers)} neuron layers, "
                   f"{len(info.wrappers)} temporal wrappers{converted})")
        click.echo(layer_table(info.layers, verification if check else None))
        if check:
            v = verification
            la = "n/a" if v["level_agreement"] is None else f"{v['level_agreement']:.6f}"
            t1 = "n/a" if v["top1_agreement"] is None else f"{v['top1_agreement']:.4f}"
            if v.get("top1_ties"):
                t1 += f" ({v['top1_ties']} tie(s) within the output tolerance counted as agreeing)"
            click.echo(f"verification at T=1 ({v['data']}, onnxruntime opt level {opt_level}): level agreement "
                       f"{la}, top-1 agreement {t1}, max |diff| {v['max_abs_diff']:.3g}"
                       + (f"; as run, against the plain ANN: max |diff| {v['plain_ann']['max_abs_diff']:.3g}"
                          if v.get("plain_ann") else "")
                       + (" [QCFS layers are lossy at T=1 by design; excluded]" if v["lossy_layers_excluded"] else ""))
    if verbosity >= VERBOSE:
        click.echo("passes: " + ", ".join(f"{name} {seconds:.3f} s" for name, seconds in info.pass_seconds.items()))
        for note in info.notes:
            click.echo(f"note: {note}")
    if not passed:
        hint = ""
        if mode == "folded":  # its thresholds are tolerances, and random inputs make near-tied logits
            hint = ("; folded mode rounds differently from the ANN: verify on real inputs (--calibration-data), "
                    "or keep the ANN's arithmetic (--exact)" if not calibration_data else
                    "; folded mode rounds differently from the ANN: --exact keeps the ANN's arithmetic")
        raise VerificationError("verification failed: " + "; ".join(verification["failures"][:3])
                                + " (no model written)" + hint)
    summary = f"wrote {output} in {elapsed:.2f} s"
    if check:
        summary += " — verification passed"
    click.echo(summary)


def _report_layers(info, verification):
    by_name = {p["name"]: p for p in verification.get("layers", [])} if verification else {}
    keys = ("name", "kind", "neuron", "neurons", "shape", "theta", "theta_out", "s_min", "s_max", "fan_out",
            "state_in", "state_out", "count_index", "source")
    out = []
    for layer in info.layers:
        row = {k: getattr(layer, k) for k in keys}
        if layer.name in by_name:
            p = by_name[layer.name]
            row.update(level_agreement=p["level_agreement"], mismatches=p["mismatches"])
        out.append(row)
    return out


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
