"""pmsm-demo: the main job on a fresh machine — compile the bundled PQA ResNet-20 and run it on
the bundled 1,000 lossless CIFAR-10 test images; print ANN vs SNN accuracy at T = 1, 2, 4, 8,
spikes, events and energy per image under both counting rules (and the QCFS baseline next to it
when its model is shipped too, compared at equal T and at equal accuracy)."""

from __future__ import annotations

import json
import os
import time

import click

from pmsm_compiler.errors import InputError, cli_errors
from pmsm_compiler.limits import check_timesteps

PQA_MODEL = "resnet20_pqa_cifar10.onnx"
QCFS_MODEL = "resnet20_qcfs_cifar10.onnx"


def _shipped(name):
    from pmsm_compiler.models import shipped_model_path

    try:
        return str(shipped_model_path(name))
    except FileNotFoundError:
        return None


def _convert_and_run(path, mode, dataset, timesteps, batch_size, progress):
    from pmsm_compiler.compiler import compile_model
    from pmsm_compiler.data.prepare import resolve_normalization
    from pmsm_compiler.loading import load_model
    from pmsm_compiler.runtime import SNNSession, run_dataset
    from pmsm_compiler.sessions import make_session
    from pmsm_compiler.verify import random_inputs, verify

    ann = load_model(path)
    compiled = compile_model(ann, mode=mode)
    check = verify(ann, compiled, random_inputs(compiled.info, 32, 0), mode=mode)
    if not check["passed"]:
        raise InputError(f"{os.path.basename(path)}: verification failed: {'; '.join(check['failures'][:2])}")
    mean, std = resolve_normalization("auto", compiled.info)
    report = run_dataset(SNNSession(compiled.model), dataset, timesteps, batch_size, mean, std,
                         ann_session=make_session(ann), progress=progress, model=os.path.basename(path))
    return compiled, report


def _counting_lines(report, ts):
    """Per T: events and energy per image under both counting rules; the polarity and saturation
    of the spikes over the whole run."""
    from pmsm_compiler.runtime.report import cost_at

    if report["events_per_image"] is None:
        return ["(events not counted: the model was compiled before the counters existed)"]
    lines = [f"{'T':>3} {'events/image':>13} {'energy/image, spikes rule':>26} {'events rule':>12}"]
    for t in ts:
        c = cost_at(report, t)
        e = c["energy_per_image_uj"]
        lines.append(f"{t:>3} {c['events_per_image']:>13,.0f} {_uj(e['spikes']):>26} {_uj(e['events']):>12}")
    T = report["timesteps"]
    lines.append(f"over T={T}: spikes = sum|k| = {report['positive_spikes_per_image']:,.0f} positive + "
                 f"{report['negative_spikes_per_image']:,.0f} negative per image; events = sum 1[k!=0] (one packet per "
                 f"firing neuron and step); neuron-steps at the lower cap {report['lower_cap_fraction']:.1%}, "
                 f"at the upper cap {report['upper_cap_fraction']:.1%}, silent {report['zero_fraction']:.1%}")
    return lines


def _uj(value):
    return "n/a" if value is None else f"{value:.3f} µJ"


def _at(report, t):
    from pmsm_compiler.runtime.report import E_SPIKE_PJ, TIMESTEP_MS

    spikes = sum(report["spikes_per_image_by_t"][:t])
    power_mw = spikes * E_SPIKE_PJ * 1e-12 / (t * TIMESTEP_MS * 1e-3) * 1e3
    return report["accuracy_by_t"][t - 1], spikes, power_mw


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pmsm-compiler", prog_name="pmsm-demo")
@click.option("--model", type=click.Path(dir_okay=False), help=f"PQA model (default: the shipped {PQA_MODEL}).")
@click.option("--qcfs-model", type=click.Path(dir_okay=False),
              help=f"QCFS baseline (default: the shipped {QCFS_MODEL}, if present).")
@click.option("--data", default="bundled", show_default=True, help="Images (see pmsm-run --data).")
@click.option("--timesteps", "-T", default="1,2,4,8", show_default=True, help="Timesteps to report.")
@click.option("--mode", type=click.Choice(["exact", "folded"]), default="folded", show_default=True,
              help="Compilation mode of the SNN (folded: integer spike traffic, thresholds in the weights).")
@click.option("--batch-size", default=250, show_default=True)
@click.option("--target-accuracy", help="Accuracy to compare PMSM and QCFS at (0.88 or 88%). Default: the best "
              "accuracy both reach within the largest T (at most 32).")
@click.option("--json", "json_path", type=click.Path(),
              help="Write both reports as JSON (keyed by label), with the comparison at equal accuracy "
                   "(key equal_accuracy).")
@click.option("--progress/--no-progress", default=False, show_default=True)
@cli_errors
def main(model, qcfs_model, data, timesteps, mode, batch_size, target_accuracy, json_path, progress):
    """Compile + run the bundled PQA ResNet-20 (and the QCFS baseline) on the bundled images."""
    from pmsm_compiler.cli.run import parse_accuracy
    from pmsm_compiler.data import load_dataset
    from pmsm_compiler.loading import save_text_atomic
    from pmsm_compiler.runtime.report import (ann_equal_accuracy, cost_at, equal_accuracy, format_ann_equal_accuracy,
                                              format_equal_accuracy)

    target = parse_accuracy(target_accuracy)

    try:
        ts = sorted({int(t) for t in str(timesteps).split(",") if t.strip()})
    except ValueError:
        raise InputError(f"--timesteps must be a comma list of integers, got {timesteps!r}") from None
    if not ts or ts[0] < 1:
        raise InputError("--timesteps must list integers >= 1")
    check_timesteps(ts[-1], "--timesteps")
    model = model or _shipped(PQA_MODEL)
    if model is None:
        raise InputError(f"no bundled model {PQA_MODEL} in this installation; give --model")
    qcfs_model = qcfs_model or _shipped(QCFS_MODEL)
    dataset = load_dataset(None if data == "bundled" else data)
    start = time.perf_counter()
    runs = {"PMSM (PQA → AIF)": model}
    if qcfs_model:
        runs["QCFS (→ IF)"] = qcfs_model
    reports = {}
    for label, path in runs.items():
        compiled, report = _convert_and_run(path, mode, dataset, ts[-1], batch_size, progress)
        reports[label] = report
        card = os.path.splitext(path)[0] + ".json"
        trained = ""
        if os.path.exists(card):
            with open(card) as f:
                c = json.load(f)
            trained = (f"; trained {c['training']['epochs_done']} epochs, ANN {c['ann_accuracy_onnxruntime']:.2%} "
                       f"on the 10k test set")
        click.echo(f"\n{label}: {os.path.basename(path)} — {len(compiled.layers)} neuron layers, {mode} mode{trained}")
        click.echo(f"data: {report['data']} ({report['samples']} images); ANN accuracy "
                   f"{report['ann_accuracy']:.2%}; ANN and SNN agree on {report['t1_prediction_agreement']:.2%} "
                   f"of predictions at T=1")
        click.echo(f"{'T':>3} {'ANN acc':>8} {'SNN acc':>8} {'spikes/image':>13} {'power (mW)':>11}")
        for t in ts:
            acc, spikes, power = _at(report, t)
            click.echo(f"{t:>3} {report['ann_accuracy']:>8.2%} {acc:>8.2%} {spikes:>13,.0f} {power:>11.4f}")
        e = report["energy"]
        click.echo(f"T={ts[-1]}: SOPs/image {e['sops']:,.0f} → {e['snn_sop_energy_pj'] / 1e6:.3f} µJ (SNN, 0.9 pJ/AC) "
                   f"vs ANN MACs {e['ann_mac_energy_pj'] / 4.6:,.0f} → {e['ann_mac_energy_pj'] / 1e6:.3f} µJ (4.6 pJ/MAC)")
        for line in _counting_lines(report, ts):
            click.echo(line)
        for line in format_ann_equal_accuracy(ann_equal_accuracy(report)):
            click.echo(line)
    compared = None
    if len(reports) == 2:
        (pl, pr), (ql, qr) = reports.items()
        click.echo("\nPMSM vs QCFS at equal T (spikes per image, paper Eq. 11 power):")
        for t in ts[:2]:
            pa, ps, pp = _at(pr, t)
            qa, qs, qp = _at(qr, t)
            click.echo(f"  T={t}: accuracy {pa:.2%} vs {qa:.2%}; spikes {ps:,.0f} vs {qs:,.0f} "
                       f"(QCFS/PMSM {qs / ps:.2f}x); power {pp:.4f} vs {qp:.4f} mW (QCFS/PMSM {qp / pp:.2f}x)")
        click.echo("PMSM vs QCFS at equal T (energy per image, SOPs x 0.9 pJ, spikes rule | events rule):")
        for t in ts[:2]:
            pe, qe = cost_at(pr, t)["energy_per_image_uj"], cost_at(qr, t)["energy_per_image_uj"]
            click.echo(f"  T={t}: {_uj(pe['spikes'])} vs {_uj(qe['spikes'])} | "
                       f"{_uj(pe['events'])} vs {_uj(qe['events'])}")
        compared = equal_accuracy({"PMSM": pr, "QCFS": qr}, target)  # within T <= min(32, the largest T)
        click.echo("")
        for line in format_equal_accuracy(compared):
            click.echo(line.replace("at equal accuracy", "PMSM vs QCFS at equal accuracy", 1))
    if json_path:
        save_text_atomic(json.dumps({**reports, "equal_accuracy": compared}, indent=1) + "\n", json_path)
    click.echo(f"\ndone in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":  # pragma: no cover
    main()
