"""Every `cxr` command, run as a user who got something wrong: a missing file, a wrong path, an unreachable
gateway, an unreachable Triton (nothing listens on their ports: no server is started). Each ends in one line
on stderr naming the problem, no traceback, and the exit status of its kind (cxr_cli.exit_codes).

The commands are read from the parser, so a command added without cases here fails
test_every_command_has_cases. They run in process (cxr_cli.main.main: an exception escaping it, which a shell would
see as a traceback, fails the test) with settings from CXR_* variables in a temporary folder; a few run as
`python -m cxr_cli` too, to see the real stderr and exit status."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cxr.processes import free_ports
from cxr.registry import get_model
from cxr.settings import to_environment
from cxr_cli import exit_codes
from cxr_cli.exit_codes import BAD_INPUT, NOT_FOUND, OK, REFUSED, UNAVAILABLE, USAGE
from cxr_cli.main import build_parser, main
from support import DATA_DIR, make_settings

ROOT = Path(__file__).resolve().parents[3]
EXPORTED = "siglip-tiny"  # the smallest twin: exported once for the cases that reach Triton
NIH = DATA_DIR / "nih800" / "labels.csv"
PNG = sorted((DATA_DIR / "cxr_samples").glob("*.png"))[0]  # given where a text file is expected


def commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every command the parser runs, as its words: ("index", "build"), ("search",)."""
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions:
        return {prefix}
    return {leaf for name, sub in actions[0].choices.items() for leaf in commands(sub, prefix + (name,))}


MISSING, WRONG_PATH, NO_GATEWAY, NO_TRITON = "missing file", "wrong path", "no gateway", "no Triton"
NOT_THERE, SETTING, USAGE_ERROR, NO_PACS, NO_MILVUS = "not there", "setting", "usage", "no PACS", "no Milvus"
WRONG_FILE, ARGUMENT = "wrong file", "wrong argument"
FINE = "nothing wrong"  # no server is needed: it says so and succeeds


@dataclass(frozen=True)
class Case:
    problem: str
    argv: tuple[str, ...]
    code: int
    says: str  # words of the one error line (or of stdout, for a case that succeeds)
    env: dict = field(default_factory=dict)  # CXR_* overrides; "{tmp}" and "{free}" (a closed port) are filled in
    exported: bool = False  # needs EXPORTED in the model repository

    @property
    def id(self) -> str:
        return f"{self.problem}: {' '.join(self.argv)}"[:80]


CASES = [
    Case(NO_TRITON, ("models",), OK, "not running"),
    Case(MISSING, ("models",), BAD_INPUT, "triton_tls_ca", env={"CXR_TRITON_TLS_CA": "{tmp}/no-ca.pem"}),
    Case(NOT_THERE, ("export", "--model", "no-such-model"), NOT_FOUND, "no-such-model"),
    Case(WRONG_PATH, ("export", "--model", EXPORTED, "--checkpoint", "{tmp}/no-checkpoint"), BAD_INPUT,
         "no-checkpoint"),
    Case(NOT_THERE, ("serve",), BAD_INPUT, "model repository"),
    Case(NO_TRITON, ("serve", "--triton", "external", "--timeout", "1"), UNAVAILABLE, "Triton was not ready"),
    Case(SETTING, ("serve", "--triton", "external", "--timeout", "1"), BAD_INPUT, "refusing to listen on 0.0.0.0",
         env={"CXR_GATEWAY_HOST": "0.0.0.0"}),
    Case(FINE, ("stop",), OK, "nothing recorded as running"),
    Case(MISSING, ("index", "build", "--labels-csv", "{tmp}/no-labels.csv"), NOT_FOUND, "no-labels.csv"),
    Case(NO_TRITON, ("index", "build", "--model", EXPORTED, "--manifest", "{tmp}/archive.csv"), UNAVAILABLE,
         "cannot serve siglip-tiny_image", exported=True),
    Case(WRONG_PATH, ("index", "build", "--model", EXPORTED, "--labels-csv", str(NIH), "--images-dir",
                      "{tmp}/no-images"), BAD_INPUT, "none of the 800 images could be read", exported=True),
    Case(MISSING, ("index", "build", "--model", EXPORTED, "--manifest", "{tmp}/archive.csv"), BAD_INPUT,
         "triton_tls_ca", env={"CXR_TRITON_TLS_CA": "{tmp}/no-ca.pem"}, exported=True),
    Case(WRONG_FILE, ("index", "build", "--manifest", str(PNG)), BAD_INPUT, "is not UTF-8 text"),
    Case(USAGE_ERROR, ("index", "build", "--reports-csv", "{tmp}/archive.csv"), USAGE, "--projections-csv"),
    Case(USAGE_ERROR, ("index", "build", "--dicomweb", "http://127.0.0.1:{free}/dicom-web", "--labels-csv", str(NIH)),
         USAGE, "leave out"),
    Case(NO_PACS, ("index", "follow", "--dicomweb", "http://127.0.0.1:{free}/dicom-web", "--once", "--model",
                   EXPORTED), UNAVAILABLE, "could not reach the DICOMweb server", exported=True),
    Case(NOT_THERE, ("index", "follow", "--dicomweb", "http://127.0.0.1:{free}/dicom-web", "--once"), NOT_FOUND,
         "not exported"),
    Case(NOT_THERE, ("index", "synth", "--model", EXPORTED, "--count", "10"), NOT_FOUND, "not exported"),
    Case(USAGE_ERROR, ("index", "synth", "--model", EXPORTED, "--count", "-5"), USAGE,
         "--count: '-5': give a whole number of 1 or more"),
    Case(ARGUMENT, ("index", "synth", "--model", EXPORTED, "--count", "100", "--unexported", "--index-type", "opq",
                      "--output-dir", "{tmp}/index"), BAD_INPUT, "needs at least 256 images, not 100"),
    Case(WRONG_PATH, ("index", "synth", "--model", EXPORTED, "--count", "10", "--unexported", "--output-dir",
                      "{tmp}/archive.csv/index"), BAD_INPUT, "archive.csv: not a directory"),
    Case(NOT_THERE, ("index", "delete", "--study", "1.2.3", "--model", EXPORTED), BAD_INPUT, "build one first"),
    Case(NO_MILVUS, ("index", "delete", "--study", "1.2.3", "--model", EXPORTED, "--backend", "milvus",
                     "--milvus-uri", "http://127.0.0.1:{free}"), UNAVAILABLE, "Milvus at http://127.0.0.1:"),
    Case(NOT_THERE, ("index", "compact", "--model", EXPORTED), BAD_INPUT, "no index in"),
    Case(MISSING, ("index", "calibrate", "--labels-csv", "{tmp}/no-labels.csv"), NOT_FOUND, "no-labels.csv"),
    Case(NOT_THERE, ("index", "calibrate", "--model", EXPORTED, "--labels-csv", str(NIH)), BAD_INPUT, "no index in",
         exported=True),
    Case(MISSING, ("train", "--labels-csv", "{tmp}/no-labels.csv", "--out", "{tmp}/run"), NOT_FOUND,
         "no-labels.csv"),
    Case(MISSING, ("compare", "--labels-csv", "{tmp}/no-labels.csv"), NOT_FOUND, "no-labels.csv"),
    Case(WRONG_PATH, ("compare", "--labels-csv", str(NIH), "--images-dir", "{tmp}/no-images"), BAD_INPUT,
         "--images-dir"),
    Case(NO_GATEWAY, ("search", "text", "effusion", "--timeout", "5"), UNAVAILABLE,
         "UNAVAILABLE: the gateway at 127.0.0.1:"),
    Case(MISSING, ("search", "image", "{tmp}/no-image.png"), NOT_FOUND, "no-image.png"),
    Case(WRONG_PATH, ("search", "image", "{tmp}"), BAD_INPUT, "cannot read the image"),
    Case(SETTING, ("search", "text", "effusion"), BAD_INPUT, "--insecure", env={"CXR_TOKEN": "t0k3n"}),
    Case(WRONG_PATH, ("certs", "dev", "{tmp}/archive.csv/pki"), BAD_INPUT, "archive.csv/pki: Not a directory"),
    Case(MISSING, ("backup", "verify", "{tmp}/no-backup"), NOT_FOUND, "no backup at"),
    Case(MISSING, ("backup", "restore", "--from", "{tmp}/no-backup", "--to-root", "{tmp}/root"), NOT_FOUND,
         "no backup at"),
    Case(WRONG_PATH, ("backup", "create", "--to", "{tmp}/archive.csv/backups"), BAD_INPUT, "not a directory"),
    Case(MISSING, ("token", "issue", "--key", "{tmp}/no-signing.key", "--subject", "s", "--scope", "search"),
         NOT_FOUND, "no-signing.key"),
    Case(SETTING, ("keys", "add", "--owner", "o", "--scope", "search"), BAD_INPUT, "api_keys_file"),
    Case(WRONG_PATH, ("keys", "add", "--owner", "o", "--scope", "search"), BAD_INPUT, "archive.csv: not a directory",
         env={"CXR_API_KEYS_FILE": "{tmp}/archive.csv/keys.json"}),
    Case(SETTING, ("keys", "list"), BAD_INPUT, "api_keys_file"),
    Case(WRONG_PATH, ("keys", "list"), BAD_INPUT, "archive.csv", env={"CXR_API_KEYS_FILE": "{tmp}/archive.csv"}),
    Case(NOT_THERE, ("keys", "revoke", "abcd"), NOT_FOUND, "abcd", env={"CXR_API_KEYS_FILE": "{tmp}/keys.json"}),
    Case(MISSING, ("audit", "verify", "{tmp}/no-audit.log"), NOT_FOUND, "no-audit.log"),
    Case(MISSING, ("reports", "import", "{tmp}/no-reports.ndjson"), NOT_FOUND, "no-reports.ndjson"),
    Case(WRONG_PATH, ("reports", "import", "{tmp}"), BAD_INPUT, "not a file"),
    Case(WRONG_FILE, ("reports", "import", str(PNG)), BAD_INPUT, "is not UTF-8 text"),
    Case(SETTING, ("reports", "listen", "--host", "10.0.0.1"), BAD_INPUT, "loopback"),
    Case(NOT_THERE, ("reports", "listen", "--model", "no-such-model"), NOT_FOUND, "no-such-model"),
]


def _leaf(argv: tuple[str, ...], known: set[tuple[str, ...]]) -> tuple[str, ...]:
    return next(leaf for leaf in known if argv[:len(leaf)] == leaf)


def test_every_command_has_cases():
    known = commands(build_parser())
    covered = {_leaf(case.argv, known) for case in CASES}
    assert known - covered == set(), "add cases for these commands"
    assert {MISSING, WRONG_PATH, NO_GATEWAY, NO_TRITON} <= {case.problem for case in CASES}


@pytest.fixture(scope="module")
def exported_repository(tmp_path_factory, cache_dir) -> Path:
    from export.repository import export_model

    settings = make_settings(tmp_path_factory.mktemp("exported"), cache_dir)
    export_model(get_model(EXPORTED), settings, log=lambda *_: None)
    return settings.model_repository


@pytest.fixture
def run_cxr(tmp_path, cache_dir, monkeypatch, request):
    """`cxr ARGV` in process, in an empty folder with settings on ports nothing listens on: (status, out, err)."""
    settings = make_settings(tmp_path, cache_dir)
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("CXR_")]:
        monkeypatch.delenv(name)
    for name, value in to_environment(settings).items():
        monkeypatch.setenv(name, value)
    samples = sorted((DATA_DIR / "nih800" / "valid" / "1_abnormal").glob("*.png"))[:3]
    (tmp_path / "archive.csv").write_text("image\n" + "".join(f"{p}\n" for p in samples))
    capsys = request.getfixturevalue("capsys")

    def run(case: Case) -> tuple[int, str, str]:
        fill = {"{tmp}": str(tmp_path), "{free}": str(free_ports(1)[0])}
        if case.exported:
            monkeypatch.setenv("CXR_MODEL_REPOSITORY", str(request.getfixturevalue("exported_repository")))
        for name, value in case.env.items():
            monkeypatch.setenv(name, _filled(value, fill))
        try:
            status = main([_filled(word, fill) for word in case.argv])
        except SystemExit as exit_:  # argparse
            status = exit_.code
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run


def _filled(text: str, fill: dict) -> str:
    for key, value in fill.items():
        text = text.replace(key, value)
    return text


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_a_mistake_is_one_line_with_the_status_of_its_kind(case, run_cxr):
    status, out, err = run_cxr(case)
    if case.code == OK:
        assert status == OK and case.says in out, err
        return
    errors = [line for line in err.splitlines()  # ours, or argparse's "cxr index synth: error: ..."
              if line.startswith("error: ") or (line.startswith("cxr") and ": error: " in line)]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    assert case.says in errors[0], errors[0]
    assert status == case.code, f"{exit_codes.MEANINGS.get(status)}: {errors[0]}"


@pytest.mark.parametrize("command", sorted(commands(build_parser())), ids=" ".join)
def test_a_command_line_that_does_not_parse_exits_usage(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--no-such-option"])
    err = capsys.readouterr().err
    assert exit_.value.code == USAGE and err.startswith("usage: cxr ") and "Traceback" not in err
    assert err.splitlines()[-1].startswith("cxr") and ": error: " in err.splitlines()[-1]


def _cxr(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    environ.update(env or {}, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "clients" / "python"),
                                                                       environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "cxr_cli", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=environ)


def test_the_statuses_reach_the_shell_without_a_traceback(tmp_path):
    settings = make_settings(tmp_path, tmp_path / "cache")
    env = to_environment(settings)
    for argv, code in [(("audit", "verify", str(tmp_path / "none.log")), NOT_FOUND),
                       (("search", "text", "effusion", "--timeout", "5"), UNAVAILABLE),
                       (("keys", "list"), BAD_INPUT), (("index", "nonsense"), USAGE)]:
        done = _cxr(*argv, env=env)
        assert done.returncode == code and "Traceback" not in done.stderr, (argv, done.stderr)
        assert len(done.stderr.strip().splitlines()) == (2 if code == USAGE else 1), done.stderr  # usage: + error:


def test_statuses_by_kind_and_by_the_gateway_s_code():
    from cxr import errors

    assert [exit_codes.of_error(kind("x")) for kind in (
        errors.InvalidArgumentError, errors.FailedPreconditionError, errors.NotFoundError, errors.UnavailableError,
        errors.UnauthenticatedError, errors.ResourceExhaustedError, errors.InternalError, errors.CxrError)] == \
        [BAD_INPUT, BAD_INPUT, NOT_FOUND, UNAVAILABLE, REFUSED, REFUSED, 1, 1]
    assert [exit_codes.of_status(name) for name in ("PERMISSION_DENIED", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", None)] \
        == [REFUSED, UNAVAILABLE, 1, 1]
    assert exit_codes.of_error(FileNotFoundError(2, "No such file or directory", "/x")) == NOT_FOUND
    assert exit_codes.of_error(PermissionError(13, "Permission denied", "/x")) == REFUSED
    assert exit_codes.of_error(exit_codes.UsageError("x")) == USAGE
    assert exit_codes.describe_os_error(FileNotFoundError(2, "No such file or directory", "/x")) == \
        "/x: No such file or directory"
