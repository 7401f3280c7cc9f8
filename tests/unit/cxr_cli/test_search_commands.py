"""`cxr search`'s result table (cxr_cli.search_commands): PACS columns when hits have them, image counts
when grouped; run in a child process from the checkout, as the other tests of the command line run `cxr`."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PRINT = """
from cxr_cli.main import build_parser
from cxr_cli.search_commands import print_hits
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
