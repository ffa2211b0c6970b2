"""pmsm-demo: the main job on a fresh machine — compile the bundled PQA ResNet-20 and run it on
the bundled 1,000 lossless CIFAR-10 test images; print ANN vs SNN accuracy at T = 1, 2, 4, 8,
spikes, events and energy per image under both counting rules (and next to it, when they are
shipped too, the sparse PQA ResNet-20 and the QCFS baseline, each PMSM model compared with QCFS at
equal T, and all of them at equal accuracy)."""

from __future__ import annotations

import json
import os
import time

import click

from pmsm_compiler.cli.options import (NORMAL, VERBOSE, check_threads, command, json_option, mode_options,
                                       parse_providers, progress_option, resolve_mode, session_options, show_progress,
                                       verbosity)
from pmsm_compiler.errors import InputError, cli_errors
from pmsm_compiler.limits import parse_timesteps
from pmsm_compiler.files import check_output_path

PQA_MODEL = "resnet20_pqa_cifar10.onnx"
SPARSE_MODEL = "resnet20_pqa_sparse_cifar10.onnx"
QCFS_MODEL = "resnet20_qcfs_cifar10.onnx"
# label in the printout and the JSON report → short name in the comparisons
LABELS = {"PMSM (PQA → AIF)": "PMSM", "PMSM sparse (PQA → AIF, spike-penalized)": "PMSM sparse",
          "QCFS (→ IF)": "QCFS"}


def _training_budget(card: dict) -> str:
    """What a model card says the model was trained for; a fine-tune counts the stages it started from."""
    from pmsm_compiler.models import training_stages

    *earlier, own = training_stages(card)
    if not earlier:
        return f"trained {own} epochs"
    return f"fine-tuned {own} epochs after {' + '.join(str(n) for n in earlier)} earlier ones"


def _shipped(name):
    from pmsm_compiler.models import shipped_model_path

    try:
        return str(shipped_model_path(name))
    except FileNotFoundError:
        return None


def _convert_and_run(path, mode, dataset, timesteps, batch_size, progress, providers=None, opt_level="all",
                     threads=0, kernels="auto"):
    from pmsm_compiler.data.prepare import resolve_normalization
    from pmsm_compiler.pipeline import compile_and_verify
    from pmsm_compiler.runtime import SNNSession, run_dataset
    from pmsm_compiler.sessions import make_session

    result = compile_and_verify(path, mode, samples=32, opt_level=opt_level)
    result.raise_if_failed(os.path.basename(path))
    mean, std = resolve_normalization("auto", result.info)
    session = SNNSession(result.model, providers=providers, opt_level=opt_level, threads=threads, kernels=kernels)
    report = run_dataset(session, dataset, timesteps, batch_size, mean, std,
                         ann_session=make_session(result.ann, opt_level, session.providers, threads), progress=progress,
                         model=os.path.basename(path))
    return result, report


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
    from pmsm_compiler.runtime.report import eq11_power_mw

    spikes = sum(report["spikes_per_image_by_t"][:t])
    return report["accuracy_by_t"][t - 1], spikes, eq11_power_mw(spikes, t)


@command("pmsm-demo")
@click.option("--model", type=click.Path(dir_okay=False), help=f"PQA model (default: the shipped {PQA_MODEL}).")
@click.option("--sparse-model", type=click.Path(dir_okay=False),
              help=f"A second PMSM model, e.g. one fine-tuned to fire less (default: the shipped {SPARSE_MODEL}, if "
                   "present and --model is not given).")
@click.option("--qcfs-model", type=click.Path(dir_okay=False),
              help=f"QCFS baseline (default: the shipped {QCFS_MODEL}, if present).")
@click.option("--data", default="bundled", show_default=True, help="Images (see pmsm-run --data).")
@click.option("--timesteps", "-T", default="1,2,4,8", show_default=True, metavar="T[,T...]",
              help="The T rows to report: one T (8) or a comma list (1,2,4,8); the SNN runs up to the largest, "
                   "and the comparisons at equal accuracy look at every t up to it.")
@mode_options()
@click.option("--batch-size", default=250, show_default=True)
@click.option("--target-accuracy", help="Accuracy to compare PMSM and QCFS at (0.88 or 88%). Default: the best "
              "accuracy both reach within the largest T (at most 32).")
@json_option("Write the reports as JSON (keyed by label), with the comparison at equal accuracy "
             "(key equal_accuracy).")
@session_options
@click.option("--kernels", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Fused neuron kernels on the CPU (see pmsm-run --kernels).")
@progress_option
@verbosity(quiet_help="Print only errors and the summary line.",
           verbose_help="Also each model's verification at T=1 (level and top-1 agreement); -vv also lets the "
                        "libraries' own warnings through.")
@cli_errors
def main(model, sparse_model, qcfs_model, data, timesteps, mode, exact, batch_size, target_accuracy, json_path, providers,
         opt_level, threads, kernels, progress, verbosity):
    """Compile + run the bundled PQA ResNet-20 (and the sparse one and the QCFS baseline) on the bundled images."""
    from pmsm_compiler.cli.run import parse_accuracy
    from pmsm_compiler.data import load_dataset
    from pmsm_compiler.files import save_text_atomic
    from pmsm_compiler.runtime.report import (ann_equal_accuracy, cost_at, equal_accuracy, format_ann_equal_accuracy,
                                              format_equal_accuracy)

    target = parse_accuracy(target_accuracy)
    mode = resolve_mode(mode, exact)
    ts = parse_timesteps(timesteps, "--timesteps")
    check_threads(threads)
    if json_path:
        json_path = check_output_path(json_path, "the JSON report")  # before the run, not after it
    provider_list = parse_providers(providers)
    say = click.echo if verbosity >= NORMAL else (lambda *args, **kwargs: None)
    if model is None:
        model = _shipped(PQA_MODEL)
        if model is None:
            raise InputError(f"no bundled model {PQA_MODEL} in this installation; give --model")
        sparse_model = sparse_model or _shipped(SPARSE_MODEL)  # shipped beside the shipped dense model only
    qcfs_model = qcfs_model or _shipped(QCFS_MODEL)
    dataset = load_dataset(None if data == "bundled" else data)
    start = time.perf_counter()
    pmsm_label, sparse_label, qcfs_label = LABELS
    runs = {pmsm_label: model, sparse_label: sparse_model, qcfs_label: qcfs_model}
    runs = {label: path for label, path in runs.items() if path}
    reports = {}
    for label, path in runs.items():
        result, report = _convert_and_run(path, mode, dataset, ts[-1], batch_size, show_progress(progress, verbosity),
                                          provider_list, opt_level, threads, kernels)
        compiled = result.compiled
        reports[label] = report
        card = os.path.splitext(path)[0] + ".json"
        trained = ""
        if os.path.exists(card):
            with open(card) as f:
                c = json.load(f)
            trained = f"; {_training_budget(c)}, ANN {c['ann_accuracy_onnxruntime']:.2%} on the 10k test set"
        say(f"\n{label}: {os.path.basename(path)} — {len(compiled.layers)} neuron layers, {mode} mode{trained}")
        say(f"data: {report['data']} ({report['samples']} images); ANN accuracy "
            f"{report['ann_accuracy']:.2%}; ANN and SNN agree on {report['t1_prediction_agreement']:.2%} "
            f"of predictions at T=1")
        say(f"{'T':>3} {'ANN acc':>8} {'SNN acc':>8} {'spikes/image':>13} {'power (mW)':>11}")
        for t in ts:
            acc, spikes, power = _at(report, t)
            say(f"{t:>3} {report['ann_accuracy']:>8.2%} {acc:>8.2%} {spikes:>13,.0f} {power:>11.4f}")
        e = report["energy"]
        say(f"T={ts[-1]}: SOPs/image {e['sops']:,.0f} → {e['snn_sop_energy_pj'] / 1e6:.3f} µJ "
            f"(SNN, {e['e_ac_pj']:g} pJ/AC) "
            f"vs ANN MACs {e['ann_macs']:,.0f} → {e['ann_mac_energy_pj'] / 1e6:.3f} µJ "
            f"({e['e_mac_pj']:g} pJ/MAC)")
        for line in _counting_lines(report, ts):
            say(line)
        for line in format_ann_equal_accuracy(ann_equal_accuracy(report)):
            say(line)
        if verbosity >= VERBOSE:
            v = result.verification
            la = "n/a" if v["level_agreement"] is None else f"{v['level_agreement']:.6f}"
            t1 = "n/a" if v["top1_agreement"] is None else f"{v['top1_agreement']:.4f}"
            say(f"verification at T=1 ({v['data']}): level agreement {la}, top-1 agreement {t1}, "
                f"max |diff| {v['max_abs_diff']:.3g}")
    compared = None
    if qcfs_label in reports:
        qr = reports[qcfs_label]
        for label in (pmsm_label, sparse_label):
            if label not in reports:
                continue
            name, pr = LABELS[label], reports[label]
            say(f"\n{name} vs QCFS at equal T (spikes per image, paper Eq. 11 power):")
            for t in ts[:2]:
                pa, ps, pp = _at(pr, t)
                qa, qs, qp = _at(qr, t)
                say(f"  T={t}: accuracy {pa:.2%} vs {qa:.2%}; spikes {ps:,.0f} vs {qs:,.0f} "
                    f"(QCFS/{name} {qs / ps:.2f}x); power {pp:.4f} vs {qp:.4f} mW (QCFS/{name} {qp / pp:.2f}x)")
            say(f"{name} vs QCFS at equal T (energy per image, SOPs x {pr['energy']['e_ac_pj']:g} pJ, spikes rule | "
                "events rule):")
            for t in ts[:2]:
                pe, qe = cost_at(pr, t)["energy_per_image_uj"], cost_at(qr, t)["energy_per_image_uj"]
                say(f"  T={t}: {_uj(pe['spikes'])} vs {_uj(qe['spikes'])} | "
                    f"{_uj(pe['events'])} vs {_uj(qe['events'])}")
    if len(reports) > 1:
        # within T <= min(32, the largest T); default target: the best accuracy every model reaches
        compared = equal_accuracy({LABELS[label]: r for label, r in reports.items()}, target)
        names = " vs ".join(LABELS[label] for label in reports)
        say("")
        for line in format_equal_accuracy(compared):
            say(line.replace("at equal accuracy", f"{names} at equal accuracy", 1))
    if json_path:
        save_text_atomic(json.dumps({**reports, "equal_accuracy": compared}, indent=1) + "\n", json_path)
    click.echo(f"\ndone in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":  # pragma: no cover
    main()
