"""A path an index records (UTF-8 text) that the file system encoding cannot encode (`LC_ALL=C` with `PYTHONUTF8=0`:
ascii): `search --image` said the checkpoint was "not found ... (moved since?)" and `explore` that the image roots "no
longer exist", though both are there (Python's exists() / is_dir() say False for a name it cannot encode). They now
say the path cannot be named in this locale's encoding, and how to run instead."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.commands.test_train import _one_process_env

# run in a child under LC_ALL=C / PYTHONUTF8=0; where the platform's Python keeps UTF-8 even so, the child makes
# os.fsencode refuse non-ASCII text itself, as an ascii file system encoding does
CHILD = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from types import SimpleNamespace

    if sys.getfilesystemencoding().lower().replace("-", "") == "utf8":
        real = os.fsencode
        def fsencode(name):
            text = os.fspath(name)
            if isinstance(text, str):
                text.encode("ascii")
            return real(name)
        os.fsencode = fsencode
    from dynametric.errors import InputError
    from dynametric.retrieval.explorer import Explorer
    from dynametric.retrieval.model import load_index_model

    root, image, ckpt, index_dir = json.loads(sys.argv[1])
    out = {"encoding": sys.getfilesystemencoding()}
    index = SimpleNamespace(model={"checkpoint": ckpt}, loaded_from=index_dir)
    try:
        load_index_model(index, None, None)
    except InputError as exc:
        out["search"] = str(exc)
    explorer = Explorer(SimpleNamespace(image_roots=[root], paths=[image], size=1))
    out["notes"] = explorer.notes
    out["image"] = list(explorer.image(0))
    print(json.dumps(out))
""")


def test_recorded_paths_this_locale_cannot_name_are_said_so(tmp_path: Path) -> None:
    root = tmp_path / "données"
    (root / "run é").mkdir(parents=True)
    (root / "run é" / "best.ckpt").write_bytes(b"")
    (root / "img.png").write_bytes(b"")
    args = json.dumps([str(root), str(root / "img.png"), str(root / "run é" / "best.ckpt"), str(tmp_path / "idx")])
    env = {**_one_process_env(), "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    proc = subprocess.run([sys.executable, "-c", CHILD, args], capture_output=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    out = json.loads(proc.stdout)
    hint = f"cannot be named in this locale's encoding ({out['encoding']}); run with a UTF-8 locale (LC_ALL=C.UTF-8) " \
           "or PYTHONUTF8=1"
    assert out["search"] == (f"{tmp_path}/idx/index.json key 'model.checkpoint': checkpoint file "
                             f"{root}/run é/best.ckpt {hint}")
    assert out["notes"] == [f"the image root(s) {root} {hint}: no image under them is shown"]
    assert out["image"] == [404, f"item 0's image file {hint}"]
