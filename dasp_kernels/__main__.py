"""`dasp-kernels check [...]` (also `python -m dasp_kernels check`)."""
import sys


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "check":
        print("usage: dasp-kernels check [--quick] [--bench] [--json FILE]", file=sys.stderr)
        return 2
    from dasp_kernels.check import main as check_main

    return check_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
