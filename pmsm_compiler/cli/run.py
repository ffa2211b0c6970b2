"""pmsm-run: run a compiled SNN for T timesteps on a data set; accuracy by t, spikes, SOPs, energy.

    pmsm-run MODEL.snn.onnx --timesteps T [--data PATH] [--ann ANN.onnx] [--target-accuracy A]
             [--json PATH] [--plot DIR]

Prints the tables (accuracy by timestep, per-layer spikes and SOPs, the counting rules per layer,
energy by method and rule) and, with --ann or --target-accuracy, the comparison at equal
accuracy: the smallest T at which the SNN reaches the target (default: the ANN's accuracy) and
its energy per image there under both counting rules, next to the ANN's. The JSON
report (``--json``) is documented in docs/report-schema.md, section "pmsm-run --json"; files are
written atomically. Exit codes: 0 done, 2 bad input (one line on stderr, no traceback).
"""

from __future__ import annotations

import json
import os
import sys

import click

from pmsm_compiler.cli.options import (NORMAL, VERBOSE, check_plot_dir, check_threads, command, json_option,
                                       parse_providers, progress_option, session_options, show_progress, verbosity)
from pmsm_compiler.errors import InputError, cli_errors
from pmsm_compiler.files import check_output_path
from pmsm_compiler.limits import DEFAULT_TIME_BATCH, MAX_TIMESTEPS, check_timesteps


def parse_accuracy(value: str | None, flag: str = "--target-accuracy") -> float | None:
    """A target accuracy: a fraction in [0, 1] (0.88) or a percentage (88%)."""
    if value is None:
        return None
    text = str(value).strip()
    percent = text.endswith("%")
    try:
        number = float(text[:-1] if percent else text)
    except ValueError:
        raise InputError(f"{flag} must be a fraction (0.88) or a percentage (88%), got {value!r}") from None
    if percent:
        number /= 100
    if not 0 <= number <= 1:  # also refuses nan
        raise InputError(f"{flag} must be a fraction in [0, 1] (0.88) or a percentage (88%), got {value!r}")
    return number


@command("pmsm-run")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-T", "--timesteps", type=int, required=True, help="Number of timesteps T, 1 to "
              f"{MAX_TIMESTEPS:,} (accuracy and spikes are reported for every t <= T).")
@click.option("--data", default="bundled", show_default=True,
              help="Data: .npz, .npy, CIFAR python folder, image folder, or 'bundled' (1,000 CIFAR-10 test images).")
@click.option("--batch-size", default=64, show_default=True, type=int, help="Images per batch.")
@click.option("--limit", type=int, default=None, help="Use only the first N samples.")
@click.option("--ann", "ann_path", type=click.Path(dir_okay=False),
              help="The source ANN (ONNX): adds its accuracy and the T=1 prediction agreement.")
@click.option("--target-accuracy", help="Accuracy to compare at (0.88 or 88%): the smallest T at which the SNN "
              "reaches it and its energy per image there. Default with --ann: the ANN's accuracy.")
@json_option("Write the JSON report here (docs/report-schema.md, section pmsm-run --json).")
@click.option("--plot", "plot_dir", type=click.Path(), metavar="DIR",
              help="Write the figures into this folder: accuracy_vs_t.png and spikes_per_layer.png.")
@session_options
@click.option("--normalization", type=click.Choice(["auto", "cifar10", "cifar100", "imagenet", "none"]),
              default="auto", show_default=True,
              help="For uint8 images: auto (the model's recorded normalization, else cifar10), a preset, or none. "
                   "A model whose input is uint8 gets the pixels raw.")
@click.option("--kernels", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Fused neuron kernels on the CPU (built with the machine's C compiler on first use; same results): "
                   "auto uses them when they build, on requires them, off runs the neurons' ONNX bodies.")
@click.option("--time-batch", type=int, default=DEFAULT_TIME_BATCH, show_default=True, metavar="STEPS",
              help="With the fused kernels, run up to STEPS timesteps layer by layer in one pass of the network "
                   "(small batches; same results); 1 runs the timesteps one by one.")
@progress_option
@verbosity(quiet_help="Print only errors and the summary line.",
           verbose_help="Also what ran the neurons (fused kernels, and why a layer kept its ONNX body); -vv also "
                        "lets the libraries' own warnings through.")
@cli_errors
def main(model, timesteps, data, batch_size, limit, ann_path, target_accuracy, json_path, plot_dir, providers,
         opt_level, threads, normalization, kernels, time_batch, progress, verbosity):
    """Run the compiled SNN MODEL for T timesteps on a data set and report accuracy, spikes and energy."""
    check_timesteps(timesteps, "--timesteps")
    if batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be >= 1, got {limit}")
    check_threads(threads)
    if time_batch < 1:
        raise InputError(f"--time-batch must be >= 1, got {time_batch}")
    target = parse_accuracy(target_accuracy)
    # numpy and onnx (with its ml_dtypes, about 1 s here) only once there is work to do
    import numpy as np

    if json_path:
        json_path = check_output_path(json_path, "the JSON report")
    if plot_dir:
        plot_dir = check_plot_dir(plot_dir, "plots to")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InputError("--plot needs matplotlib (pip install 'pmsm-compiler[plot]')") from None
    provider_list = parse_providers(providers)

    from pmsm_compiler import __version__
    from pmsm_compiler.data import load_dataset
    from pmsm_compiler.data.prepare import resolve_normalization
    from pmsm_compiler.files import save_text_atomic
    from pmsm_compiler.loading import load_model
    from pmsm_compiler.process_memory import peak_memory_bytes
    from pmsm_compiler.runtime import SNNSession, run_dataset
    from pmsm_compiler.runtime.report import ann_equal_accuracy, format_tables, plot
    from pmsm_compiler.sessions import make_session, onnxruntime_errors
    from pmsm_compiler.snn_format import read_snn_info

    snn_model = load_model(model, static_inputs=False)
    if read_snn_info(snn_model) is None:
        raise InputError(f"{model} is not a compiled SNN (no 'pmsm.snn' metadata); compile it with pmsm-compile "
                         "first (the ANN goes to --ann)")
    with onnxruntime_errors(model):
        session = SNNSession(snn_model, providers=provider_list, opt_level=opt_level, threads=threads,
                             kernels=kernels, time_batch=time_batch)
    del snn_model
    info = session.info
    ann_session = None
    if ann_path:
        ann_model = load_model(ann_path, static_inputs=False)
        if read_snn_info(ann_model) is not None:
            raise InputError(f"--ann {ann_path} is a compiled SNN; give the source ANN")
        with onnxruntime_errors(ann_path):
            ann_session = make_session(ann_model, opt_level, session.providers, threads)
        del ann_model
    dataset = load_dataset(None if data == "bundled" else data)
    if target is not None and dataset.y is None:
        raise InputError(f"--target-accuracy needs labels; {dataset.name} has none")
    mean, std = resolve_normalization(normalization, info)

    with onnxruntime_errors(f"{model} or {ann_path}" if ann_path else model):
        report = run_dataset(session, dataset, timesteps, batch_size, mean, std, ann_session=ann_session,
                             progress=show_progress(progress, verbosity), limit=limit, model=os.path.abspath(model))
    report.update({
        "ann": os.path.abspath(ann_path) if ann_path else None,
        "compiler_version": __version__,
        "opt_level": opt_level,
        "providers": session.providers,
        "fused_kernels": session.kernel_report(),
        # the full batches' (a smaller last batch may run more steps per pass)
        "time_batched": session.time_batch_report(min(batch_size, max(report["samples"], 1)), timesteps),
        "normalization": ({"choice": "raw", "mean": None, "std": None} if session.input_dtype == np.uint8 else
                          {"choice": normalization, "mean": list(mean), "std": list(std)}),
        "equal_accuracy": ann_equal_accuracy(report, target),
        "peak_memory_bytes": peak_memory_bytes(),
    })
    plots = []
    if plot_dir:
        try:
            plots = plot(report, plot_dir)
        except OSError as exc:
            raise InputError(f"cannot write plots to {plot_dir}: {exc.strerror or exc}") from None
        report["plots"] = plots
    if json_path:
        try:
            save_text_atomic(json.dumps(report, indent=1) + "\n", json_path)
        except OSError as exc:
            raise InputError(f"cannot write the JSON report {json_path}: {exc.strerror or exc}") from None
    if verbosity >= NORMAL:
        click.echo(f"pmsm-run {__version__}: {model} ({info.mode} mode, {len(info.layers)} neuron layers) "
                   f"on {report['data']}, T={timesteps}, {report['samples']} samples, "
                   f"onnxruntime {', '.join(session.providers)} opt level {opt_level}, "
                   + (f"fused neuron kernels ({session.fused_layers} layers)" if session.kernels
                      else "neurons as ONNX function bodies"))
        click.echo(format_tables(report))
    if verbosity >= VERBOSE:
        k = report["fused_kernels"]
        click.echo(f"fused kernels: {'used, ' + str(k['layers_fused']) + ' layers' if k['used'] else 'not used'}"
                   + (f" ({k['reason']})" if k["reason"] else ""))
        for note in k["unfused"]:
            click.echo(f"  kept its ONNX body: {note}")
        tb = report["time_batched"]
        click.echo(f"timesteps per pass: {tb['steps_per_run']}" + (f" ({tb['reason']})" if tb["reason"] else ""))
    acc = report["accuracy_by_t"]
    summary = f"T={timesteps}: "
    summary += f"accuracy {100 * acc[-1]:.2f}%" if acc else "no labels"
    if report["ann_accuracy"] is not None:
        summary += f" (ANN {100 * report['ann_accuracy']:.2f}%)"
    if report["t1_prediction_agreement"] is not None:
        summary += f", T=1 agreement {100 * report['t1_prediction_agreement']:.2f}%"
    summary += f", {report['spikes_per_image']:.4g} spikes/image"
    if report["events_per_image"] is not None:
        summary += f", {report['events_per_image']:.4g} events/image"
    summary += f", {report['energy']['power_mw']:.4g} mW (Eq. 11)"
    eq = report["equal_accuracy"]
    if eq is not None:
        snn = eq["snn"]
        summary += (f"; reaches {100 * eq['target']:.2f}% at T={snn['t']}" if snn["reached"] else
                    f"; does not reach {100 * eq['target']:.2f}% within T={eq['max_t']}")
    if json_path:
        summary += f"; wrote {json_path}"
    if plots:
        summary += f"; plots in {plot_dir}"
    click.echo(summary)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
