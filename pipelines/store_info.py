"""Print a JSON summary of a feature directory: items, failures, and per modality the items
with features (present), token width (dim), max_tokens, backbone and whether it was pretrained."""


import _bootstrap  # noqa: F401
from scalemm import cli


def main() -> dict:
    ap = cli.ArgumentParser(description=__doc__)
    ap.add_argument("features", help="feature directory written by pipelines/extract.py")
    a = ap.parse_args()
    from scalemm.extract.info import store_info

    return store_info(a.features)


if __name__ == "__main__":
    cli.run(main)
