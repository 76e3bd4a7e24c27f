"""A private local Ray head for `ray job submit`: its own token, ports and temp dir, all kept
in one folder; the user's ~/.ray is never read or written.

    python pipelines/ray_head.py start DIR [--num-cpus N] [-- EXTRA RAY START ARGS]
    source DIR/env.sh          # RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH, RAY_API_SERVER_ADDRESS
    ray job submit --working-dir . -- python pipelines/extract.py ...
    python pipelines/ray_head.py stop DIR

`start` returns when the head takes jobs (last stdout line: JSON with the addresses), or ends
with one `error:` line naming why the head did not start (read from DIR/ray-head.log).
`stop` stops only the processes of that head (never `ray stop`) and keeps its logs in
DIR/logs. See scalemm/ray_head.py for why each of these choices.
"""

import argparse
import sys
import time

import _bootstrap  # noqa: F401
from scalemm import cli


def main() -> dict:
    ap = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["start", "stop"])
    ap.add_argument("dir", help="folder of the head: token, state, env.sh, log (made if missing)")
    ap.add_argument("--num-cpus", type=cli.int_at_least(1), default=None,
                    help="CPUs the head offers (default: all of the machine's)")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the head (default 180)")
    ap.add_argument("ray_args", nargs=argparse.REMAINDER, help="after --: more `ray start` arguments")
    a = ap.parse_args()
    extra = a.ray_args[1:] if a.ray_args[:1] == ["--"] else a.ray_args
    cli.setup_logging()
    from scalemm.ray_head import ENV, start_head, stop_head

    t = time.perf_counter()
    if a.action == "stop":
        if extra:
            ap.error("stop takes no ray arguments")
        stopped = stop_head(a.dir)
        return {"dir": a.dir, "stopped": stopped, "seconds": round(time.perf_counter() - t, 1)}
    print(f"starting a private Ray head in {a.dir} ...", file=sys.stderr, flush=True)
    head = start_head(a.dir, num_cpus=a.num_cpus, extra_args=extra, timeout=a.timeout)
    env = f"{head.dir}/{ENV}"
    print(f"Ray head up in {time.perf_counter() - t:.0f} s; dashboard {head.dashboard} (token auth). "
          f"Use it with:\n  source {env}\n  ray job submit --working-dir . -- python pipelines/extract.py ...\n"
          f"Stop it with: python pipelines/ray_head.py stop {a.dir}", file=sys.stderr, flush=True)
    return {"dir": head.dir, "dashboard": head.dashboard, "gcs_address": head.gcs_address,
            "token_path": head.token_path, "env": env, "pid": head.pid, "log": head.log,
            "seconds": round(time.perf_counter() - t, 1)}


if __name__ == "__main__":
    cli.run(main)
