"""A package of ours shadowed by another (a distribution, a folder in the working directory) is named
before the command imports anything, instead of failing on an unrelated import deep inside."""

import subprocess
import sys

from cxr_cli import exit_codes, packages


def test_in_this_checkout_every_package_is_ours():
    assert packages.foreign_packages() is None


def test_a_shadowing_folder_is_named_with_the_remedy(tmp_path):
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "__init__.py").write_text("")
    shadowed = subprocess.run([sys.executable, "-c", "import sys; from cxr_cli import main; sys.exit(main(['models']))"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60,
                              env={"PYTHONPATH": f"{tmp_path}:{packages.HOME}", "PATH": "/usr/bin:/bin"})
    assert shadowed.returncode == exit_codes.BAD_INPUT
    assert "the package `training` comes from" in shadowed.stderr and "make setup" in shadowed.stderr
