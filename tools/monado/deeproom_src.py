"""Makes the DeepRoom source tree importable inside the trixie folder's venv.

Runs with the folder's own Python (3.13). Two commands:
  deps PYPROJECT SKIP...  print the project's dependency specs (shell-quoted), minus SKIP
  install VENV            add a path hook so `import deeproom...` reads /src, the
                          repository bind-mounted read-only by run-in-root.sh

Why not `pip install -e /src`: that would write build metadata into the host's
checkout (shared with the host venv's own editable install).
"""

from __future__ import annotations

import re
import shlex
import sys
import sysconfig
import tomllib
from pathlib import Path

FINDER = '''"""Maps the deeproom packages onto /src (see tools/monado/deeproom_src.py)."""
import importlib.util
import sys
import tomllib
from importlib.abc import MetaPathFinder
from pathlib import Path

_SRC = Path("/src")


class _DeepRoomSource(MetaPathFinder):
    def __init__(self, mapping):
        self.mapping = mapping

    def find_spec(self, fullname, path=None, target=None):
        folder = self.mapping.get(fullname)
        if folder is None:
            return None
        init = folder / "__init__.py"
        return importlib.util.spec_from_file_location(
            fullname, init, submodule_search_locations=[str(folder)])


def install():
    try:
        data = tomllib.loads((_SRC / "pyproject.toml").read_text())
    except OSError:
        return
    dirs = data["tool"]["setuptools"]["package-dir"]
    sys.meta_path.insert(0, _DeepRoomSource({k: _SRC / v for k, v in dirs.items()}))


install()
'''


def deps(pyproject: Path, skip: list[str]) -> str:
    data = tomllib.loads(pyproject.read_text())
    skipped = {s.lower() for s in skip}
    out = []
    for spec in data["project"]["dependencies"]:
        name = re.split(r"[\[<>=!~; ]", spec, maxsplit=1)[0].lower()
        if name not in skipped:
            out.append(shlex.quote(spec))
    return " ".join(out)


def install(venv: Path) -> None:
    site = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    (site / "_deeproom_src_finder.py").write_text(FINDER)
    (site / "deeproom_src.pth").write_text("import _deeproom_src_finder\n")


if __name__ == "__main__":
    if sys.argv[1] == "deps":
        print(deps(Path(sys.argv[2]), sys.argv[3:]))
    elif sys.argv[1] == "install":
        install(Path(sys.argv[2]))
    else:
        raise SystemExit(f"unknown command {sys.argv[1]!r}; use deps or install")
