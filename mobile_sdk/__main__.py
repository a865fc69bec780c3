"""python -m mobile_sdk BUNDLE IMAGE [--lat LAT --lon LON [--accuracy-m M]] [--top K] [--json] [--explain]

Prints the ranking a phone would show: combined score, and the vision and geo parts where the
model has them. Exit status 2 with a one-line message on bad input.
"""
from __future__ import annotations

import argparse
import json
import sys

from .classifier import GeoClassifier
from .errors import GeoAwareError
from .options import GeoClassifierOptions


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mobile_sdk", description=__doc__.splitlines()[0])
    parser.add_argument("bundle", help="bundle folder (model.tflite, labels.txt, whitelist.gwl, manifest.json)")
    parser.add_argument("image", help="JPEG or PNG file")
    parser.add_argument("--lat", type=float, help="latitude in degrees (give --lon too)")
    parser.add_argument("--lon", type=float, help="longitude in degrees (give --lat too)")
    parser.add_argument("--accuracy-m", type=float, help="location accuracy in metres (widens the whitelist)")
    parser.add_argument("--explain", action="store_true", help="also list the labels geography excluded, and why")
    parser.add_argument("--top", type=int, default=5, help="how many labels to show (default 5)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    fusion = parser.add_mutually_exclusive_group()  # default: the bundle's recommended fusion
    fusion.add_argument("--no-whitelist", action="store_true", help="do not apply the whitelist table")
    fusion.add_argument("--soft", action="store_true", help="soft whitelist: down-weight instead of removing")
    fusion.add_argument("--hard", action="store_true", help="hard whitelist: remove labels not seen nearby")
    args = parser.parse_args(argv)
    try:
        options = GeoClassifierOptions(max_results=args.top, use_whitelist=False if args.no_whitelist else None,
                                       whitelist_mode="soft" if args.soft else "hard" if args.hard else None)
        with GeoClassifier.from_bundle(args.bundle, options) as classifier:
            result = classifier.classify(args.image, args.lat, args.lon, args.accuracy_m)
            fusion = classifier.fusion
    except (GeoAwareError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    where = (f"location ({result.location[0]:.4f}, {result.location[1]:.4f})" if result.location_used
             else "no location: vision only")
    chosen = {"bundle": "the bundle's recommendation", "options": "your option",
              "default": "default, the bundle recommends none"}[fusion.source]
    whitelist = f"off ({chosen})" if fusion.whitelist == "off" else \
        f"{'filtered' if result.whitelist_filtered else 'did not filter'} ({fusion.whitelist}, {chosen})"
    print(f"model {result.model_version}; {where}; whitelist {whitelist}")
    print(f"{'rank':>4}  {'score':>7}  {'vision':>7}  {'geo':>7}  {'nearby':>6}  label")
    for rank, c in enumerate(result.categories, 1):
        vision = "-" if c.vision_score is None else f"{c.vision_score:.4f}"
        geo = "-" if c.geo_score is None else f"{c.geo_score:+.3f}"
        nearby = {None: "-", True: "yes", False: "no"}[c.expected_nearby]
        print(f"{rank:>4}  {c.score:>7.4f}  {vision:>7}  {geo:>7}  {nearby:>6}  {c.label}")
    if result.rollup is not None:
        print(f"roll-up: {result.rollup.rank} {result.rollup.name} ({result.rollup.score:.4f})")
    for e in result.excluded if args.explain else ():
        print(f"excluded: {e.label} (vision {e.vision_score:.4f}): {e.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
