#!/usr/bin/env python3
"""Where the sidecar's heap goes per connection, from a dhat profile (dhat-heap.json).

    bench/heap-summary.py dhat-heap.json CONNS [--frames K] [--top T]

Takes the live heap at its global peak (dhat's t-gmax: with CONNS idle clients connected, that
is when every client is there), groups the allocation sites by their first frame inside the
taskstream code (or the first named frame), and prints bytes and blocks per connection for each,
largest first, with K frames of context. Sites under 1 byte per connection are summed as "rest".
"""
import argparse
import json
import re
from collections import defaultdict

OURS = re.compile(r"taskstream_sidecar::")


def short(frame: str) -> str:
    # "0x1234: path::to::fn (src/file.rs:10:5)" -> "path::to::fn (file.rs:10)"
    frame = re.sub(r"^0x[0-9a-f]+: ", "", frame)
    frame = re.sub(r"\{\{closure\}\}", "{c}", frame)
    frame = re.sub(r"<.*?>", "<..>", frame) if len(frame) > 160 else frame
    frame = re.sub(r"\(([^()]*/)?([^/()]+\.rs):(\d+):\d+\)", r"(\2:\3)", frame)
    return frame


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile")
    ap.add_argument("conns", type=int)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--top", type=int, default=30)
    a = ap.parse_args()
    d = json.load(open(a.profile))
    ftbl = d["ftbl"]
    groups = defaultdict(lambda: [0, 0, None])
    total = 0
    for pp in d["pps"]:
        gb, gbk = pp.get("gb", 0), pp.get("gbk", 0)
        if gb == 0:
            continue
        total += gb
        frames = [ftbl[i] for i in pp["fs"]]
        key_i = next((i for i, f in enumerate(frames) if OURS.search(f)), None)
        if key_i is None:
            key_i = next((i for i, f in enumerate(frames) if "alloc::" not in f and "dhat::" not in f and "[root]" not in f), 0)
        key = short(frames[key_i])
        g = groups[key]
        g[0] += gb
        g[1] += gbk
        if g[2] is None:
            g[2] = [short(f) for f in frames[max(0, key_i - a.frames):key_i + 2]]
    n = a.conns
    print(f"heap at its peak: {total} bytes, {total / n:.0f} per connection ({n} connections)")
    rest = 0
    rows = sorted(groups.items(), key=lambda kv: -kv[1][0])
    for i, (key, (b, k, ctx)) in enumerate(rows):
        if i >= a.top or b / n < 1:
            rest += b
            continue
        print(f"{b / n:8.0f} B {k / n:6.2f} blocks  {key}")
        for f in ctx:
            print(f"{'':26}{f[:200]}")
    print(f"{rest / n:8.0f} B  rest")


if __name__ == "__main__":
    main()
