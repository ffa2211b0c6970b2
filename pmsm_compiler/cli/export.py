"""pmsm-export: export a zoo model (from a pmsm-train checkpoint, or freshly initialised) to ONNX."""

from __future__ import annotations

from collections import Counter

import click

from pmsm_compiler.defaults import FLOAT16_MIN_ELEMENTS
from pmsm_compiler.cli.options import VERBOSE, command, json_option, verbosity
from pmsm_compiler.errors import InputError, cli_errors


@command("pmsm-export")
@click.option("--model", default="resnet20", show_default=True, help="Zoo model name.")
@click.option("--checkpoint", type=click.Path(), help="checkpoint.pt written by pmsm-train (its config wins).")
@click.option("--act", type=click.Choice(["pqa", "qcfs", "relu", "clip"]), default="pqa", show_default=True,
              help="Activation of a freshly initialised model (as pmsm-train --act; a checkpoint's own wins).")
@click.option("--num-classes", default=10, show_default=True)
@click.option("--image-size", default=32, show_default=True)
@click.option("--pqa-as", type=click.Choice(["node", "plain"]), default="node", show_default=True,
              help="node: one pmsm::PQA node per activation; plain: Div/Add/Floor/Clip/Mul ops.")
@click.option("--exporter", type=click.Choice(["dynamo", "legacy"]), default="dynamo", show_default=True)
@click.option("--weights-float16", is_flag=True,
              help=f"Store weights of {FLOAT16_MIN_ELEMENTS} or more elements as float16 behind a Cast to float32: "
                   "half the file; "
                   "the model becomes the one with those weights rounded to float16.")
@click.option("--seed", default=0, show_default=True, help="Seed for a freshly initialised model.")
@click.option("-o", "--output", required=True, type=click.Path(), help="Where to write the ONNX model.")
@json_option("Write what was exported (model, activation, exporter, the ONNX graph's op counts) as JSON here.")
@verbosity(quiet_help="Print only errors and the summary line.", verbose_help="Also the exported graph's op counts.")
@cli_errors
def main(model, checkpoint, act, num_classes, image_size, pqa_as, exporter, weights_float16, seed, output, json_path,
         verbosity):
    """Export MODEL with pmsm::PQA (or QCFS) nodes that stock onnxruntime runs."""
    try:
        import torch
    except ImportError:
        raise InputError("pmsm-export needs PyTorch: pip install 'pmsm-compiler[torch]'") from None
    from pmsm_compiler.training.export import export_onnx
    from pmsm_compiler.training.zoo import build_model

    metadata = {}
    if checkpoint:
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=False)
            cfg = state["config"]
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is bad input
            raise InputError(f"cannot read checkpoint {checkpoint}: {str(exc).splitlines()[0]}") from None
        from pmsm_compiler.training.trainer import model_for_config

        net = model_for_config(cfg)
        net.load_state_dict(state["model"])
        from pmsm_compiler.data import NORMALIZATIONS

        mean, std = NORMALIZATIONS[cfg.get("dataset", "cifar10")]
        metadata = {"normalization": {"mean": list(mean), "std": list(std)},
                    "training": {"config": cfg, "epochs_done": state["epoch"],
                                 "final_test_acc": state["history"][-1].get("test_acc") if state["history"] else None}}
    else:
        torch.manual_seed(seed)
        try:
            net = build_model(model, num_classes=num_classes, act=act)
        except ValueError as exc:
            raise InputError(str(exc)) from None
    from pmsm_compiler.files import check_output_path

    if json_path:
        json_path = check_output_path(json_path, "the JSON report")
    net.eval()
    proto = export_onnx(net, output, input_shape=(1, 3, image_size, image_size), exporter=exporter, pqa_as=pqa_as,
                        metadata=metadata, weights_float16=weights_float16)
    ops = Counter(f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in proto.graph.node)
    if verbosity >= VERBOSE:
        click.echo("ops: " + ", ".join(f"{op} {count}" for op, count in sorted(ops.items())))
    if json_path:
        import json
        import os

        from pmsm_compiler.files import save_text_atomic

        cfg = metadata["training"]["config"] if checkpoint else {"model": model, "act": act}
        report = {"tool": "pmsm-export", "output": os.path.abspath(output), "model": cfg["model"],
                  "checkpoint": os.path.abspath(checkpoint) if checkpoint else None, "act": cfg["act"],
                  "exporter": exporter,
                  "pqa_as": pqa_as, "weights_float16": weights_float16, "input_shape": [1, 3, image_size, image_size],
                  "ops": dict(sorted(ops.items()))}
        save_text_atomic(json.dumps(report, indent=1) + "\n", json_path)
    click.echo(f"wrote {output}")
