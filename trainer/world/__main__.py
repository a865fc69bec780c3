"""python -m trainer.world: write a benchmark world (see trainer/world/__init__.py)."""
from __future__ import annotations

import argparse

import trainer.world
from trainer.world.build import write_world
from trainer.world.presets import PRESETS


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m trainer.world",
                                     description=trainer.world.__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    parser.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--observations", help="CSV/npz of label/lat/lon: real ranges instead of procedural")
    parser.add_argument("--force", action="store_true", help="replace an existing --out folder")
    args = parser.parse_args(argv)
    try:
        out = write_world(args.out, args.preset, args.seed, args.observations, args.force)
    except (FileExistsError, ValueError) as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"wrote {args.preset} world (seed {args.seed}) to {out}")


if __name__ == "__main__":
    main()
