"""The `cxr` command line (cxr_cli.main).

- `cxr search`'s result table: PACS columns when hits have them, image counts when grouped; run in a child
  process from the checkout, as the other tests of the command line run `cxr`.
- `cxr compare` runs the benchmarks of the checkout it was installed from; installed from a wheel, which
  ships no benchmarks, it says so instead of failing on an import."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from cxr.errors import CxrError

main = importlib.import_module("cxr_cli.main")
ROOT = Path(__file__).resolve().parents[3]
PRINT = """
from cxr_cli.main import build_parser, print_hits
from cxr.retrieval.v1 import retrieval_pb2 as pb
hits = {hits}
print_hits(pb.SearchResponse(model="m", hits=[pb.Hit(**h) for h in hits]))
print(build_parser().parse_args(["search", "text", "x", "--group-by-study"]).group_by_study)
"""


def _table(*hits: dict) -> list[str]:
    done = subprocess.run([sys.executable, "-c", PRINT.format(hits=list(hits))], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=True)
    return done.stdout.splitlines()


def test_a_file_archive_s_hits_print_without_pacs_columns():
    lines = _table(dict(rank=1, score=0.5, study_uid="s1", projection="Frontal", labels=["Mass"]))
    assert lines[1].split() == ["rank", "score", "study", "projection", "labels", "impression"]
    assert lines[2].split() == ["1", "0.500", "s1", "Frontal", "Mass", "-"]
    assert lines[-1] == "True"  # --group-by-study reaches the request


def test_grouped_pacs_hits_print_accession_date_and_image_count():
    lines = _table(dict(rank=1, score=0.25, study_uid="1.2.3", accession_number="A9", study_date="20240102",
                        image_ids=["a", "b"], impression="Small left effusion."))
    assert lines[1].split()[:6] == ["rank", "score", "study", "accession", "date", "images"]
    assert lines[2].split()[:6] == ["1", "0.250", "1.2.3", "A9", "20240102", "2"]


def test_the_checkout_benchmarks_are_found_beside_the_command():
    assert importlib.import_module("benchmarks.compare") is main._checkout_benchmarks()


def test_without_a_checkout_the_command_says_where_to_run_it(tmp_path, monkeypatch):
    (tmp_path / "cxr_cli").mkdir()
    monkeypatch.setattr(main, "__file__", str(tmp_path / "cxr_cli" / "main.py"))
    with pytest.raises(CxrError, match="source checkout"):
        main._checkout_benchmarks()
