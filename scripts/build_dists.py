"""Build the wheelhouse: one wheel and one sdist per distribution of the monorepo, checked by twine.

    python scripts/build_dists.py                 # core/ and every plugins/*/ -> dist/ (tox -e build)
    python scripts/build_dists.py --wheel-only --outdir /tmp/wh core plugins/bridge-llama

Then ``pip install --find-links dist bridge-core bridge-llama`` installs them as PyPI would (the
dependencies still come from the index). Older files of the same distributions are removed from the
output folder first, so the wheelhouse holds exactly what the checkout builds. Each version comes from
its package's ``__version__`` (hatch's dynamic version; see the pyproject files).
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def default_projects() -> list[Path]:
    """core/ and every plugin folder holding a pyproject.toml."""
    plugins = sorted(p.parent for p in (REPO / "plugins").glob("*/pyproject.toml"))
    return [REPO / "core", *plugins]


def distribution_name(project: Path) -> str:
    """The ``[project] name`` of ``project/pyproject.toml``, normalized as in wheel file names."""
    text = (project / "pyproject.toml").read_text()
    match = re.search(r'^name\s*=\s*"([^"]+)"', text, flags=re.M)
    if match is None:
        raise SystemExit(f"{project / 'pyproject.toml'}: no [project] name")
    return re.sub(r"[-_.]+", "_", match.group(1)).lower()


def remove_old_files(outdir: Path, name: str) -> None:
    for old in [*outdir.glob(f"{name}-*.whl"), *outdir.glob(f"{name}-*.tar.gz")]:
        old.unlink()


def build(project: Path, outdir: Path, wheel_only: bool) -> list[Path]:
    """Build ``project`` into ``outdir``; the new files (sdist, then the wheel built from it)."""
    name = distribution_name(project)
    remove_old_files(outdir, name)
    with tempfile.TemporaryDirectory(prefix="bridge-build-") as tmp:
        cmd = [sys.executable, "-m", "build", "--outdir", tmp, *(["--wheel"] if wheel_only else []), str(project)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            raise SystemExit(f"build_dists: building {project} failed ({' '.join(cmd)})")
        built = []
        for file in sorted(Path(tmp).iterdir()):
            shutil.move(str(file), outdir / file.name)
            built.append(outdir / file.name)
    return built


def twine_check(files: list[Path]) -> None:
    proc = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, files)])
    if proc.returncode != 0:
        raise SystemExit("build_dists: twine check failed (see above)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("projects", nargs="*", type=Path, help="project folders (default: core and every plugin)")
    parser.add_argument("--outdir", type=Path, default=REPO / "dist", help="the wheelhouse (default: dist/)")
    parser.add_argument("--wheel-only", action="store_true", help="wheels only, no sdists (faster)")
    parser.add_argument("--no-check", action="store_true", help="skip twine check")
    args = parser.parse_args(argv)
    projects = [p.resolve() for p in args.projects] or default_projects()
    needed = ["build", *([] if args.no_check else ["twine"])]
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        names = " ".join(missing)
        raise SystemExit(f"build_dists: needs {names.replace(' ', ' and ')}: pip install {names} (or run tox -e build)")
    args.outdir.mkdir(parents=True, exist_ok=True)
    files = []
    for project in projects:
        print(f"building {project.relative_to(REPO) if project.is_relative_to(REPO) else project}", flush=True)
        files += build(project, args.outdir, args.wheel_only)
    if not args.no_check:
        twine_check(files)
    for file in files:
        print(f"  {file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
