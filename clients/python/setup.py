"""Setuptools hooks: the gRPC stubs are generated into cxr_client/_proto while the package is built (stubs.py),
never committed; an sdist carries the protos, so that a wheel builds from it alone."""

import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # stubs.py, beside this file: PEP 517 backends do not put it on the path

import stubs  # noqa: E402


class BuildWithStubs(build_py):
    """build_py, then the stubs: into the build (a wheel) or into the source tree (an editable install)."""

    def run(self):
        super().run()
        package = HERE if self.editable_mode else Path(self.build_lib)
        stubs.generate(package / "cxr_client" / "_proto", stubs.proto_root(HERE))


class SdistWithProtos(sdist):
    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        root = stubs.proto_root(HERE)
        for proto in stubs.PROTOS:
            target = Path(base_dir) / "protos" / proto
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / proto, target)


setup(cmdclass={"build_py": BuildWithStubs, "sdist": SdistWithProtos})
