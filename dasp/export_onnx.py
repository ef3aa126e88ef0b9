"""Export BiSeNetV1 (either spatial path) to ONNX with a dynamic batch dimension.

    dasp export-onnx --spatial-path dasp ...   (or python -m dasp.export_onnx ...)
    python -m dasp.export_onnx --spatial-path dasp --out bisenetv1_dasp.onnx [--checkpoint FILE]
        [--height 1024 --width 2048] [--no-fuse]

By default the model is first passed through dasp_kernels.fuse: under export the fused modules
emit standard ops (folded Conv, Relu, MaxPool, Add), so the file runs in any ONNX runtime.
"""
import argparse

import torch

from dasp.checkpoint import load_model
from dasp.models import BiSeNetV1


def export(model, out, height=1024, width=2048, batch=1):
    """Writes `model` (eval mode) to `out` with the batch dimension dynamic; returns the path."""
    model = model.eval()
    x = torch.randn(batch, 3, height, width)
    # One self-contained file (the weights are ~56 MB, far below protobuf's 2 GB limit).
    torch.onnx.export(model, (x,), out, dynamo=True, external_data=False, input_names=["image"],
                      output_names=["logits"],
                      dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=1024)}})
    return out


def add_args(ap):
    ap.add_argument("--spatial-path", choices=["original", "dasp"], default="dasp")
    ap.add_argument("--num-classes", type=int, default=19, help="without --checkpoint")
    ap.add_argument("--checkpoint", help="state_dict or training checkpoint to load")
    ap.add_argument("--out", required=True)
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--no-fuse", action="store_true", help="export the unfused model")


def run(args):
    if args.checkpoint:
        model = load_model(args.checkpoint, args.spatial_path)
        # Eval mode never runs the aux heads; drop them from the file.
        for head in ("conv_out16", "conv_out32"):
            if hasattr(model, head):
                delattr(model, head)
        model.aux = False
    else:
        model = BiSeNetV1(args.num_classes, args.spatial_path, aux=False)
    if not args.no_fuse:
        import dasp_kernels

        model = dasp_kernels.fuse(model)
    export(model, args.out, args.height, args.width)
    print(f"wrote {args.out}")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_args(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
