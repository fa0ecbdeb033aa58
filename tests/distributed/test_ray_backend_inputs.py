"""RayBackend without a cluster: its arguments are checked where they enter, Ray is imported only when it connects,
a missing Ray is one line with the install command, and the driver never writes a worker's file outside the
shot's folder."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"output_mode": "nfs"}, "bytes` or `shared"),
        ({"max_retries": -1}, "0 to 10"),
        ({"max_retries": True}, "0 to 10"),
        ({"actors": 0}, "1 to 1024"),
        ({"resources": {"GPU": 0}}, "amounts > 0"),
        ({"resources": {}}, "amounts > 0"),
        ({"start_timeout_s": 0}, "start_timeout_s"),
    ],
)
def test_bad_arguments_are_one_input_error_naming_the_allowed_values(kwargs, words):
    from engine._core.errors import InputError
    from engine.distributed import RayBackend

    with pytest.raises(InputError, match=words.replace("`", ".").replace(">", ".")):
        RayBackend("auto", **kwargs)


def test_an_empty_address_is_refused():
    from engine._core.errors import InputError
    from engine.distributed import RayBackend

    with pytest.raises(InputError, match="--ray takes `auto` or a cluster address"):
        RayBackend("  ")
    RayBackend("10.0.0.5:6379", output_mode="shared", max_retries=0, actors=3, resources={"flx_gpu": 1})  # valid


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)


def test_importing_and_building_the_backend_does_not_import_ray():
    out = _run(
        "import sys; from engine.distributed import RayBackend; RayBackend('auto'); print('ray' in sys.modules)"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_without_ray_installed_connecting_names_the_extra_to_install():
    out = _run(
        "import sys; sys.modules['ray'] = None\n"
        "from engine._core.errors import EngineError\n"
        "from engine.distributed import RayBackend\n"
        "try:\n    RayBackend('auto').connect()\nexcept EngineError as e:\n    print(e)\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines() == [
        "Ray is not installed: pip install -e '.[distributed]' (on the driver and on every worker machine)"
    ]


def test_a_returned_file_outside_the_shot_folder_is_refused_and_nothing_is_written(tmp_path):
    from engine._core.errors import EngineError
    from engine.distributed.ray_backend import _write_folder

    dest = tmp_path / ".staging" / "shot-abc"
    with pytest.raises(EngineError, match="outside its shot folder"):
        _write_folder(dest, {"a.png": b"fine", "../../escaped.png": b"no"})
    assert not dest.exists() and not (tmp_path / "escaped.png").exists()
    assert list((tmp_path / ".staging").iterdir()) == []  # the hidden part folder is gone too
    # and a good reply lands complete, replacing an older staging folder in one rename
    dest.mkdir()
    (dest / "stale.png").write_bytes(b"old")
    _write_folder(dest, {"a.png": b"A", "sub/b.json": b"{}"})
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == ["a.png", "sub/b.json"]


def test_the_files_a_shot_reads_are_found_and_pointed_at_the_workers_copies():
    from engine.distributed.ray_backend import _input_paths, _map_inputs, _unmap

    video = {"prompt": "/a/b.png", "start_image": "/a/b.png", "end_image": "/a/c.png", "audio": None}
    assert _input_paths("video", video) == ["/a/b.png", "/a/c.png"]
    moved = _map_inputs("video", video, {"/a/b.png": "/w/0/b.png", "/a/c.png": "/w/1/c.png"})
    # only the path parameters move; a prompt that happens to equal a path stays as written
    assert moved == {"prompt": "/a/b.png", "start_image": "/w/0/b.png", "end_image": "/w/1/c.png", "audio": None}
    seq = {"shots": [{"prompt": "p", "start_image": "/s/1.png"}, {"prompt": "q"}], "character": "ava"}
    assert _input_paths("sequence", seq) == ["/s/1.png"]
    assert _map_inputs("sequence", seq, {"/s/1.png": "/w/0/1.png"})["shots"][0]["start_image"] == "/w/0/1.png"
    assert _input_paths("train", {"source": "pack"}) == [] and _input_paths("train", {"source": "/imgs"}) == ["/imgs"]
    assert _input_paths("score", {"media": ["/m/a.mp4", "/m/b.mp4"]}) == ["/m/a.mp4", "/m/b.mp4"]
    assert _input_paths("still", {"prompt": "x", "characters": ["ava"]}) == []
    # reports come back naming the driver's files again
    back = {"/w/0": "/m/a", "/w/1/b.mp4": "/m/b.mp4"}
    report = {"media": ["/w/0/x.png", "/w/1/b.mp4", "/w/10/y.png"], "n": 2}
    assert _unmap(report, back) == {"media": ["/m/a/x.png", "/m/b.mp4", "/w/10/y.png"], "n": 2}
