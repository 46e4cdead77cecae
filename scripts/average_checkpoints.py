"""Average the weights of checkpoints continued from one model (mmib_cli.checkpoint.averaging); run from the repo root.

    python scripts/average_checkpoints.py models/mmib-default/ner ckpt/ner-continued -o ckpt/ner-averaged
"""
from __future__ import annotations

import argparse

from mmib_cli.checkpoint.averaging import average_checkpoints
from mmib_cli.errors import MMIBError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="two or more single-task checkpoint directories")
    parser.add_argument("-o", "--output", required=True, help="checkpoint directory to write")
    args = parser.parse_args()
    try:
        print(average_checkpoints(args.checkpoints, args.output))
    except (MMIBError, ValueError) as exc:  # a missing or mismatched checkpoint: say which, no traceback
        parser.exit(1, f"error: {exc}\n")


if __name__ == "__main__":
    main()
