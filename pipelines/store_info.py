"""Print a JSON summary of a feature directory: items, failures, and per modality the items
with features (present), token width (dim), max_tokens, backbone and whether it was pretrained."""

import argparse

import _cli


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("features", help="feature directory written by pipelines/extract.py")
    a = ap.parse_args()
    from extract.info import store_info

    return store_info(a.features)


if __name__ == "__main__":
    _cli.run(main)
