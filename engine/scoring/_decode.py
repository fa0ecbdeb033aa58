"""Child-process video decoder for `media.iter_video_sampled`: writes a JSON header line + raw RGB per frame,
then a `done` line with what was decoded and what failed (the parent's damage record comes from it)."""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    from engine._core.errors import InputError

    from .media import DecodeLog, iter_video

    path, wanted = argv[0], {int(x) for x in argv[1].split(",") if x}
    thread_type = argv[2] if len(argv) > 2 else "AUTO"
    out = sys.stdout.buffer
    log = DecodeLog()
    try:
        for fd in iter_video(path, want=wanted.__contains__, thread_type=thread_type, log=log):
            arr = fd.full()
            out.write((json.dumps({"index": fd.index, "time_s": fd.time_s, "shape": list(arr.shape)}) + "\n").encode())
            out.write(memoryview(arr).cast("B"))
        out.write((json.dumps({"done": log.as_dict()}) + "\n").encode())
    except InputError as e:
        out.write((json.dumps({"error": str(e)}) + "\n").encode())
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
