"""Hit every frame route of a real plugin once for a run, in a fresh process: statuses, bodies, peak memory.

    python hostile_frames.py LOGDIR RUN   ->  one JSON line: {"answers": {route: [status, type, body]},
                                              "grown_mb": peak RSS growth while answering}
"""

from __future__ import annotations

import json
import resource
import sys

from server_support import BASE, plugin_client

ROUTES = ["frame", "frame-data", "live-data", "section-info", "value", "diff"]


def main(logdir: str, run: str) -> None:
    """Answer each route once and print what came back."""
    _plugin, client = plugin_client(logdir)
    client.get(f"{BASE}/runs")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    answers = {}
    for route in ROUTES:
        query = {"value": "&x=5&y=5", "live-data": "&timeout=0", "diff": f"&other={run}"}.get(route, "")
        resp = client.get(f"{BASE}/{route}?run={run}{query}")
        answers[route] = [resp.status_code, resp.mimetype, resp.get_data()[:300].decode("utf-8", "replace")]
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(json.dumps({"answers": answers, "grown_mb": grown}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
