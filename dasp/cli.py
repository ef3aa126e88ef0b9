"""The `dasp` command: train, eval and segment (also `python -m dasp`)."""
import argparse
import os
import sys

from dasp.data import ImageReadError

_USER_ERRORS = (FileNotFoundError, ImageReadError, ValueError)


def build_parser():
    from dasp import evaluate, export_onnx, segment, train

    ap = argparse.ArgumentParser(prog="dasp", description="BiSeNetV1 with the Depthwise Attention "
                                 "Spatial Path: Cityscapes training, evaluation and a demo.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="{train,eval,segment,export-onnx}")
    p = sub.add_parser("train", help="train on Cityscapes (one process, or several under torchrun)")
    train.add_args(p)
    p.set_defaults(func=train.run)
    p = sub.add_parser("eval", help="mIoU on a Cityscapes split with the ss/ssc/msf/mscf protocols")
    evaluate.add_args(p)
    p.set_defaults(func=evaluate.run)
    p = sub.add_parser("segment", help="colour masks and overlays for images")
    segment.add_args(p)
    p.set_defaults(func=segment.run)
    p = sub.add_parser("export-onnx", help="export BiSeNetV1 to ONNX with a dynamic batch")
    export_onnx.add_args(p)
    p.set_defaults(func=export_onnx.run)
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _USER_ERRORS as e:
        # Bad paths, corrupt files and bad options: one clear line, no traceback (DASP_DEBUG=1
        # shows it).
        if os.environ.get("DASP_DEBUG"):
            raise
        print(f"dasp {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"dasp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
