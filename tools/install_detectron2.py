#!/usr/bin/env python
"""Install detectron2 into the running interpreter's environment.

detectron2 is not published on PyPI. Users with internet access install it from its GitHub source,
which is what this script tries first. Where GitHub cannot be reached (as on the machines this
project is developed and tested on), it falls back to the only copy on a package registry: the
``sal-detectron2==0.7.2`` wheel (detectron2 main of 2024). That wheel is tagged cp310, so pip refuses
it on Python 3.11; its ``detectron2/`` package is pure Python apart from the ``_C`` extension, which
holds the C++/CUDA ops for rotated boxes and deformable convolution, none of which segdep_d2 uses.
The fallback therefore installs the wheel's declared dependencies with pip and unpacks
``detectron2/`` (without ``_C``) into site-packages.

The route taken is written to ``<site-packages>/detectron2/INSTALL_ROUTE.txt`` and printed.
Re-running is a no-op once ``import detectron2`` works.

Usage: python tools/install_detectron2.py [--force-fallback]
"""
import argparse
import email.parser
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

OFFICIAL_SOURCE = "git+https://github.com/facebookresearch/detectron2.git"
FALLBACK_WHEEL = "sal-detectron2==0.7.2"
ROUTE_FILE = "INSTALL_ROUTE.txt"


def installed_route():
    probe = "import detectron2, os; print(os.path.dirname(detectron2.__file__))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    if result.returncode != 0:
        return None
    route_file = Path(result.stdout.strip()) / ROUTE_FILE
    return route_file.read_text().strip() if route_file.is_file() else "pre-installed"


def pip(*args, check=True):
    cmd = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=check)


def record_route(route):
    package_dir = Path(sysconfig.get_paths()["purelib"]) / "detectron2"
    if package_dir.is_dir():
        (package_dir / ROUTE_FILE).write_text(route + "\n")


def try_official():
    # --no-build-isolation: detectron2's setup.py imports torch to build its C++ extension.
    result = pip("install", "--no-build-isolation", OFFICIAL_SOURCE, check=False)
    if result.returncode == 0:
        record_route(f"official: pip install {OFFICIAL_SOURCE}")
        return True
    print("detectron2: the official GitHub source could not be installed; using the fallback.")
    return False


def wheel_requirements(wheel: Path):
    """Requires-Dist entries of the wheel that apply to this interpreter (no extras)."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as zf:
        metadata_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(zf.read(metadata_name).decode())
    requirements = []
    for line in metadata.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            requirements.append(str(req))
    return requirements


def install_fallback():
    with tempfile.TemporaryDirectory() as tmp:
        pip(
            "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.10",
            "--dest", tmp, FALLBACK_WHEEL,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        pip("install", *wheel_requirements(wheel))
        site_packages = Path(sysconfig.get_paths()["purelib"])
        with zipfile.ZipFile(wheel) as zf:
            members = [
                n for n in zf.namelist()
                if n.startswith("detectron2/") and not Path(n).name.startswith("_C.")
            ]
            zf.extractall(site_packages, members=members)
    record_route(
        f"fallback: detectron2/ unpacked from the PyPI wheel {FALLBACK_WHEEL} "
        "(GitHub unreachable; C++ ops '_C' left out, unused by segdep_d2)"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--force-fallback", action="store_true", help="skip the GitHub attempt")
    args = parser.parse_args()

    route = installed_route()
    if route is None:
        if args.force_fallback or not try_official():
            install_fallback()
        route = installed_route()
        if route is None:
            sys.exit("detectron2 installation failed: `import detectron2` still fails")
    print(f"detectron2 install route: {route}")


if __name__ == "__main__":
    main()
