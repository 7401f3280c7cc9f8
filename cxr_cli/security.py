"""The security commands of `cxr`: development certificates and tokens, API keys, audit verification.

    cxr certs dev DIR                      a CA, server + client certificates, a JWT signing key + JWKS
    cxr token issue --key DIR/signing.key --subject S --scope search --ttl 1h
    cxr keys add --owner pacs-router --scope search      (list, revoke ID)
    cxr audit verify FILE... [--key FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from cxr.errors import InvalidArgumentError, NotFoundError
from cxr.settings import Settings, SettingsError

SCOPES = ("search", "studies", "admin")
TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> int:
    """'90s', '30m', '1h', '7d' (or plain seconds) -> seconds."""
    match = re.fullmatch(r"(\d+)([smhd]?)", text.strip())
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a lifetime: write e.g. 90s, 30m, 1h or 7d")
    return int(match.group(1)) * TTL_UNITS[match.group(2) or "s"]


def cmd_certs_dev(args, settings: Settings) -> int:
    from cxr.dev_pki import write_dev_pki

    written = write_dev_pki(args.dir, force=args.force)
    print(f"wrote {', '.join(p.name for p in written)} to {args.dir} (development only: never in production)")
    d = args.dir
    print(f"serve with:  CXR_TLS_CERT={d}/server.pem CXR_TLS_KEY={d}/server.key CXR_TLS_CLIENT_CA={d}/ca.pem "
          f"CXR_AUTH=token CXR_JWT_JWKS={d}/jwks.json")
    print(f"query with:  CXR_CA={d}/ca.pem CXR_CLIENT_CERT={d}/client.pem CXR_CLIENT_KEY={d}/client.key "
          f"CXR_TOKEN=$(cxr token issue --key {d}/signing.key --subject you --scope search)")
    return 0


def cmd_token_issue(args, settings: Settings) -> int:
    from cxr.dev_pki import issue_token

    if args.ttl > settings.jwt_max_ttl_s:
        raise InvalidArgumentError(f"--ttl {args.ttl} s is longer than the gateway accepts (jwt_max_ttl_s = "
                       f"{settings.jwt_max_ttl_s:g} s): issue a shorter-lived token")
    print(issue_token(args.key, args.subject, args.scope, args.ttl, settings.jwt_issuer, settings.jwt_audience))
    return 0


def _key_file(settings: Settings) -> Path:
    if settings.api_keys_file is None:
        raise SettingsError("set api_keys_file (cxr.toml or CXR_API_KEYS_FILE) to the file the gateway reads keys "
                            "from")
    return settings.api_keys_file


def cmd_keys_add(args, settings: Settings) -> int:
    from gateway import api_keys

    record, key = api_keys.add(_key_file(settings), args.owner, args.scope)
    print(f"API key {record.id} for {record.owner} ({', '.join(record.scopes)}); shown once, store it now:")
    print(key)
    return 0


def cmd_keys_list(args, settings: Settings) -> int:
    from gateway import api_keys

    keys = api_keys.read(_key_file(settings))
    if args.json:  # never the key's hash: the table does not show it either
        print(json.dumps({"keys": [{"id": k.id, "owner": k.owner, "scopes": list(k.scopes), "created": k.created,
                                    "revoked": k.revoked} for k in keys.values()]}, indent=2))
        return 0
    rows = [("id", "owner", "scopes", "created", "revoked")] + [
        (k.id, k.owner, ",".join(k.scopes), k.created, k.revoked or "-") for k in keys.values()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def cmd_keys_revoke(args, settings: Settings) -> int:
    from gateway import api_keys

    record = api_keys.revoke(_key_file(settings), args.id)
    print(f"API key {record.id} ({record.owner}) revoked at {record.revoked}; the gateway refuses it within a second")
    return 0


def cmd_audit_verify(args, settings: Settings) -> int:
    from gateway.audit_chain import key_file, log_files, read_key, verify

    missing = [str(p) for p in args.files if not p.exists()]
    if missing:
        raise NotFoundError(f"no such audit file: {', '.join(missing)}")
    folders = [str(p) for p in args.files if not p.is_file()]
    if folders:
        raise InvalidArgumentError(f"not a file: {', '.join(folders)}; name the audit log itself (e.g. audit.log)")
    key = read_key(args.key or key_file(args.files[0]))
    files = log_files(args.files)
    problem, checked = verify(files, key)
    if problem is not None:
        print(f"BROKEN after {checked} good lines: {problem}", file=sys.stderr)
        return 1
    print(f"intact: {checked} lines in {len(files)} file(s), from the first line on, each linked to the one before")
    return 0


def add_commands(sub) -> None:
    certs = sub.add_parser("certs", help="development certificates").add_subparsers(dest="certs_command",
                                                                                     required=True)
    dev = certs.add_parser("dev", help="write a development CA, server/client certificates and a JWT signing key")
    dev.add_argument("dir", type=Path)
    dev.add_argument("--force", action="store_true", help="replace files already there")
    dev.set_defaults(func=cmd_certs_dev)

    token = sub.add_parser("token", help="development JWTs").add_subparsers(dest="token_command", required=True)
    issue = token.add_parser("issue", help="print a JWT signed with a development key (issuer and audience "
                                           "from the settings)")
    issue.add_argument("--key", type=Path, required=True, help="the signing key, e.g. DIR/signing.key")
    issue.add_argument("--subject", required=True, help="who the token is for (the audit log's principal)")
    issue.add_argument("--scope", action="append", choices=SCOPES, required=True, help="repeatable")
    issue.add_argument("--ttl", type=parse_ttl, default=3600, help="lifetime: 90s, 30m, 1h (default), 12h; "
                       "at most jwt_max_ttl_s (24h by default), which the gateway enforces")
    issue.set_defaults(func=cmd_token_issue)

    keys = sub.add_parser("keys", help="API keys of service accounts (api_keys_file)").add_subparsers(
        dest="keys_command", required=True)
    add = keys.add_parser("add", help="make a key; it is printed once")
    add.add_argument("--owner", required=True, help="the service account or team that holds it")
    add.add_argument("--scope", action="append", choices=SCOPES, required=True, help="repeatable")
    add.set_defaults(func=cmd_keys_add)
    listed = keys.add_parser("list", help="ids, owners, scopes, revocations")
    listed.add_argument("--json", action="store_true", help="one JSON document instead of the table")
    listed.set_defaults(func=cmd_keys_list)
    revoke = keys.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id")
    revoke.set_defaults(func=cmd_keys_revoke)

    audit = sub.add_parser("audit", help="the audit trail").add_subparsers(dest="audit_command", required=True)
    verify = audit.add_parser("verify", help="check the keyed chain of the whole log; exit 1 naming the first bad "
                                             "line (4: a file named is missing)")
    verify.add_argument("files", type=Path, nargs="+", help="the log (its rotated files beside it are found) "
                                                            "and any rotated files kept elsewhere, in any order")
    verify.add_argument("--key", type=Path, help="the log's key (default: <log>.key beside the first file)")
    verify.set_defaults(func=cmd_audit_verify)
