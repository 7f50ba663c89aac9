"""Submit every block of a directory to the configured cluster, without waiting.

Usage (on a head node that can reach the broker):

    python -m submit.submit_directory /data/incoming/2025-10-05 [--config /etc/contimg/contimg.toml] [--json]

The workers (``contimg worker --node NAME``) must be running. Follow the
blocks with ``contimg status`` or Flower. ``contimg run DIR`` is the same
submission followed by waiting for the end.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from contimg import config, pipeline
from contimg.blocks import discover
from contimg.errors import ContimgError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="submit_directory", description=__doc__.splitlines()[0])
    p.add_argument("directory", help="directory holding *_sbNN.hdf5 files")
    p.add_argument("--config", help="TOML configuration (default: $CONTIMG_CONFIG or ./contimg.toml)")
    p.add_argument("--json", action="store_true", help="print the submitted blocks as JSON")
    p.add_argument("--force", action="store_true", help="queue blocks that are already queued or done again")
    args = p.parse_args(argv)
    try:
        cfg = config.load(args.config)
        if cfg.local:
            raise ContimgError("broker.url is empty: submission needs a running cluster; "
                               "use `contimg run --local DIR` for a private one")
        from contimg.tasks.app import configure

        configure(cfg)
        data_dir = Path(args.directory).resolve()
        disc = discover(data_dir, tolerance_s=cfg.pipeline.block_tolerance_s)
        subs = pipeline.submit(cfg, disc.blocks, data_dir, force=args.force)
    except (ContimgError, FileNotFoundError, NotADirectoryError) as e:
        print(f"submit_directory: {e}", file=sys.stderr)
        return 1
    rows = [{"block_id": s.block_id, "outcome": s.outcome, "previous_state": s.previous_state} for s in subs]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['block_id']}  {r['outcome']}" + (f" (was {r['previous_state']})" if r["previous_state"] else ""))
        print(f"queued {sum(r['outcome'] == 'queued' for r in rows)} blocks; a dispatcher "
              "(`contimg dispatch`) hands them to the imaging nodes; follow them with `contimg status`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
