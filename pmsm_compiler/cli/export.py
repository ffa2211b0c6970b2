"""pmsm-export: export a zoo model (from a pmsm-train checkpoint, or freshly initialised) to ONNX."""

from __future__ import annotations

import click

from pmsm_compiler.errors import InputError, cli_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pmsm-compiler", prog_name="pmsm-export")
@click.option("--model", default="resnet20", show_default=True, help="Zoo model name.")
@click.option("--checkpoint", type=click.Path(), help="checkpoint.pt written by pmsm-train (its config wins).")
@click.option("--act", type=click.Choice(["pqa", "qcfs", "relu"]), default="pqa", show_default=True)
@click.option("--num-classes", default=10, show_default=True)
@click.option("--image-size", default=32, show_default=True)
@click.option("--pqa-as", type=click.Choice(["node", "plain"]), default="node", show_default=True,
              help="node: one pmsm::PQA node per activation; plain: Div/Add/Floor/Clip/Mul ops.")
@click.option("--exporter", type=click.Choice(["dynamo", "legacy"]), default="dynamo", show_default=True)
@click.option("--seed", default=0, show_default=True, help="Seed for a freshly initialised model.")
@click.option("-o", "--output", required=True, type=click.Path(), help="Where to write the ONNX model.")
@cli_errors
def main(model, checkpoint, act, num_classes, image_size, pqa_as, exporter, seed, output):
    """Export MODEL with pmsm::PQA (or QCFS) nodes that stock onnxruntime runs."""
    try:
        import torch
    except ImportError:
        raise InputError("pmsm-export needs PyTorch: pip install 'pmsm-compiler[torch]'") from None
    from pmsm_compiler.training.activations import ActivationSpec
    from pmsm_compiler.training.export import export_onnx
    from pmsm_compiler.training.zoo import build_model

    metadata = {}
    if checkpoint:
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=False)
            cfg = state["config"]
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is bad input
            raise InputError(f"cannot read checkpoint {checkpoint}: {str(exc).splitlines()[0]}") from None
        spec = ActivationSpec(cfg["act"], cfg["levels"], cfg["lam"], cfg["alpha"], cfg["beta"])
        net = build_model(cfg["model"], num_classes=cfg["num_classes"], act=spec)
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
    net.eval()
    export_onnx(net, output, input_shape=(1, 3, image_size, image_size), exporter=exporter, pqa_as=pqa_as,
                metadata=metadata)
    click.echo(f"wrote {output}")
