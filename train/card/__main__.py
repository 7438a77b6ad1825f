"""Re-render the model card of a training output folder, e.g. after `python -m train.evaluate`.

python -m train.card OUTPUT_DIR [--repo-id ID]
"""

import argparse
import sys

from train.card import CardError, write_card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.card", description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", help="the folder `python -m train` wrote")
    parser.add_argument(
        "--repo-id", help="the Hub repo the adapter is (or will be) pushed to; named in the usage snippet"
    )
    args = parser.parse_args(argv)
    try:
        print(f"wrote {write_card(args.output_dir, repo_id=args.repo_id)}")
    except CardError as error:
        parser.exit(2, f"error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
