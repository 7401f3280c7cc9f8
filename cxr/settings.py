"""Runtime settings in one frozen dataclass: defaults, then cxr.toml, then CXR_* variables.

The active model is chosen here and nowhere else: `model = "..."` in cxr.toml or CXR_MODEL.
Security settings (TLS, auth, audit, limits) are described in docs/security.md.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from cxr.errors import FailedPreconditionError

CONFIG_FILE = "cxr.toml"
DEFAULT_MODEL = "cxr-mini"  # trained here, shipped in weights/: works with no download
AUTH_MODES = ("none", "token")
INDEX_BACKENDS = ("faiss", "milvus")
SESSION_KEY_MIN_CHARS = 32  # `openssl rand -base64 32` writes 44


class SettingsError(FailedPreconditionError, ValueError):
    """A setting is unknown, malformed or inconsistent with another."""


@dataclass(frozen=True)
class Settings:
    model: str = DEFAULT_MODEL
    model_repository: Path = Path("model_repository")
    cache_dir: Path = Path(".cache")  # built twins, the Triton backend folder
    run_dir: Path = Path(".run")  # pid files and logs of detached servers
    data_dir: Path = Path("../shared/data")  # sample archives; twins train their tokenizer here
    index_dir: Path = Path("indexes")  # one FAISS index per model: <index_dir>/<model>/
    # Where the gateway puts the private copy of each FAISS index it serves (cxr.private_copy), as
    # large as the index; unset: beside the index, or the temp dir where index_dir is read-only.
    index_copy_dir: Path | None = None
    # A living index (StoreBackend.apply): the gateway looks for new commits every index_changes_poll_s
    # (one stat of a file for FAISS); followers fold the commits into the build (`cxr index compact`)
    # once this many rows were added or deleted since it was written: every search scans those exactly.
    index_changes_poll_s: float = 0.2
    index_compact_rows: int = 10_000
    triton_host: str = "127.0.0.1"  # loopback unless a deployment says otherwise
    triton_http_port: int = 8000
    triton_grpc_port: int = 8001
    triton_metrics_port: int = 8002
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 50051
    use_gpu: bool = False  # search FAISS on the GPU when faiss-gpu and a GPU are present
    # The HTTP/JSON API (/v1/...) and the search page (/), in the gateway process, on gateway_host;
    # TLS with the gateway's certificate when TLS is on. 0: off.
    http_port: int = 8080
    # What a slow or idle HTTP client may hold: its TLS handshake and each request's headers must arrive
    # within http_header_timeout_s, its body within http_body_timeout_s; an idle connection is closed
    # after http_keepalive_s; beyond http_max_connections, new connections are closed at once. Bodies
    # of uploads (an image, a batch) are held at most max_concurrent_uploads at a time.
    http_header_timeout_s: float = 10.0
    http_body_timeout_s: float = 60.0
    http_keepalive_s: float = 5.0
    http_max_connections: int = 256
    max_concurrent_uploads: int = 8
    # A hit's link to its study in the hospital's viewer; {study_instance_uid}, {study_uid} and
    # {accession_number} are filled in, e.g. "https://pacs/ohif/viewer?StudyInstanceUIDs={study_instance_uid}".
    viewer_url_template: str = ""
    thumbnail_cache_mb: int = 64  # rendered thumbnails kept in memory
    # A DICOMweb PACS: what `cxr index build --dicomweb` reads by default and where the gateway
    # fetches thumbnails of images indexed from it (WADO-RS). Basic auth or a bearer token.
    dicomweb_url: str = ""
    dicomweb_user: str = ""
    dicomweb_password: str = field(default="", repr=False)
    dicomweb_token: str = field(default="", repr=False)
    dicomweb_ca: Path | None = None
    # The secret Orthanc's Lua script sends with each deletion notice to `cxr index follow
    # --deletions-listen` (Authorization: Bearer ...); empty: any local process may post notices.
    deletion_notices_token: str = field(default="", repr=False)
    # Several Tritons: "host:port" gRPC endpoints the gateway and index builds balance across (empty:
    # the one endpoint above). From the environment, comma-separated: CXR_TRITON_URLS=a:8001,b:8001.
    triton_urls: tuple[str, ...] = ()
    # Tritons that come and go (pods behind a Kubernetes headless Service): "host:port" whose every
    # address is an endpoint, looked up again every triton_dns_refresh_s, so that replicas an
    # autoscaler adds get calls and removed ones stop getting them. Instead of triton_urls.
    triton_dns: str = ""
    triton_dns_refresh_s: float = 5.0
    # The vector store: "faiss" (embedded, files under index_dir) or "milvus" (milvus_uri: a
    # Milvus Lite file such as indexes/milvus.db, or http://host:19530 with milvus_token).
    index_backend: str = "faiss"
    milvus_uri: str = ""
    milvus_token: str = field(default="", repr=False)
    # Radiology reports (cxr.reports): kept per model in <reports_dir>/<model>.sqlite (unset:
    # <index_dir>/reports), received from the RIS as HL7 v2 ORU^R01 over MLLP by `cxr reports listen`
    # on reports_mllp_host:reports_mllp_port, the accession number read from reports_accession_field
    # (OBR-3, the filler order number; some RIS send it in OBR-18 or OBR-2). The gateway looks for new
    # reports every reports_poll_s seconds.
    reports_dir: Path | None = None
    reports_mllp_host: str = "127.0.0.1"
    reports_mllp_port: int = 2575  # the port IANA registered for HL7 over MLLP
    reports_accession_field: str = "OBR-3"
    reports_poll_s: float = 1.0
    # Concurrent searches of one index are gathered into one batched search: up to this many
    # queries. Queries arriving while a search runs wait for it and go together; a wait for company
    # after an idle spell (search_batch_wait_ms) costs ~1.7 ms per query at concurrency 1.
    search_batch_max: int = 64
    search_batch_wait_ms: float = 0.0
    # Text embeddings kept for repeated queries (an LRU keyed by export and text digest, never the
    # text itself); 0: off.
    text_cache_entries: int = 4096

    # Transport security of the gateway: TLS when tls_cert and tls_key are set, mutual TLS
    # (client certificate required) when tls_client_ca is set too.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    allow_insecure: bool = False  # listen on a non-loopback address without TLS and auth anyway
    # Identity: "token" accepts JWTs (keys from jwt_jwks, a file or URL) and API keys (api_keys_file).
    auth: str = "none"
    jwt_jwks: str = ""
    jwt_issuer: str = "cxr-dev"
    jwt_audience: str = "cxr-retrieval"
    jwt_max_ttl_s: float = 24 * 3600.0  # a JWT valid longer (exp - iat) is refused
    api_keys_file: Path | None = None
    # Single sign-on on the search page (gateway/oidc.py; docs/security.md, "Single sign-on"): OpenID Connect
    # Authorization Code with PKCE against the provider at oidc_issuer (its discovery document), as the
    # client oidc_client_id (with oidc_client_secret when registered as a confidential client). The
    # values of the claim oidc_roles_claim (a dotted path for a nested one: Keycloak's
    # "realm_access.roles") become scopes through oidc_role_scopes, "radiologist=search,studies;clerk=search".
    # oidc_redirect_url: the callback as registered, unset: <the page's origin>/auth/callback.
    # oidc_ca: the CA of the provider's TLS certificate, unset: the system's. Needs auth = "token".
    # oidc_session_key: a secret every replica of the gateway shares (at least 32 characters, e.g.
    # `openssl rand -base64 32`); sessions and sign-ins under way are sealed with it in the browser's
    # cookies (gateway/sessions.py), so any replica opens them. Unset: a key of the process's own, which only
    # a gateway on loopback may use (its sessions end when it restarts).
    oidc_issuer: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: str = field(default="", repr=False)
    oidc_session_key: str = field(default="", repr=False)
    oidc_scopes: str = "openid profile"
    oidc_roles_claim: str = "roles"
    oidc_role_scopes: str = ""
    oidc_redirect_url: str = ""
    oidc_ca: Path | None = None
    audit_log: Path | None = None  # one chained JSON line per RPC; calls fail when it cannot be written
    audit_max_bytes: int = 64 * 2**20  # rotate the audit log at this size
    metrics_port: int = 8003  # Prometheus /metrics of the gateway, on loopback; 0: off
    metrics_host: str = "127.0.0.1"
    # Admission control and limits.
    max_concurrent_rpcs: int = 64
    max_concurrent_rpcs_per_client: int = 16  # per principal (per address without auth): no client holds every slot
    # Queries per second per principal (or client address without auth), a batch costing one per query;
    # the same bucket, per address, throttles callers whose calls keep being refused. 0: off.
    rate_limit_per_s: float = 50.0
    rate_limit_burst: int = 100
    default_deadline_s: float = 30.0  # for calls that bring no deadline
    max_decode_queue: int = 64  # images waiting for or in decoding; more: RESOURCE_EXHAUSTED
    max_image_pixels: int = 50_000_000  # checked from the header before decoding (all frames of a DICOM)
    # Also from the header, before decoding (cxr.images.ImageLimits): the longest side, and the longer
    # side over the shorter (chest films ~1.25, stitched spine and long-leg images ~4; 8 leaves margin).
    max_image_side: int = 20_000
    max_image_aspect: float = 8.0
    # Pixels being decoded at once across the decode threads (two of the largest images): a decode
    # that would pass it waits for others to finish; still waiting at its deadline: RESOURCE_EXHAUSTED.
    max_decoding_pixels: int = 100_000_000
    drain_grace_s: float = 10.0  # on SIGTERM, how long calls in flight may take to finish
    # Gateway -> Triton: TLS when triton_tls_ca is set (mutual with cert and key); the secret that
    # unlocks Triton's model-repository, model-config and other admin APIs (written by `cxr serve`).
    triton_tls_ca: Path | None = None
    triton_tls_cert: Path | None = None
    triton_tls_key: Path | None = None
    triton_admin_key_file: Path = Path(".run/triton-admin.key")
    # Clients (`cxr search`, the demo, benchmarks, the supervisor's health checks).
    ca: Path | None = None  # the CA that signed the gateway's certificate
    client_cert: Path | None = None
    client_key: Path | None = None
    token: str = field(default="", repr=False)  # a JWT or an API key; never printed

    def __post_init__(self):
        _check_ranges(self)
        if self.auth not in AUTH_MODES:
            raise SettingsError(f"auth = {self.auth!r}: use one of {list(AUTH_MODES)}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise SettingsError("set tls_cert and tls_key together (the gateway's certificate and its private key)")
        if self.tls_client_ca and not self.tls_cert:
            raise SettingsError("tls_client_ca (mutual TLS) needs tls_cert and tls_key as well")
        if self.max_decoding_pixels < self.max_image_pixels:
            raise SettingsError(f"max_decoding_pixels ({self.max_decoding_pixels}) must be at least max_image_pixels "
                                f"({self.max_image_pixels}): an image of the largest size allowed could never decode")
        if self.index_backend not in INDEX_BACKENDS:
            raise SettingsError(f"index_backend = {self.index_backend!r}: use one of {list(INDEX_BACKENDS)}")
        if self.index_backend == "milvus" and not self.milvus_uri:
            raise SettingsError("index_backend = 'milvus' needs milvus_uri: a Milvus Lite file (indexes/milvus.db) "
                                "or a cluster's http://host:19530")
        if self.dicomweb_token and (self.dicomweb_user or self.dicomweb_password):
            raise SettingsError("set dicomweb_user and dicomweb_password (basic auth) or dicomweb_token, not both")
        if self.triton_dns:
            _check_triton_dns(self)
        if self.oidc_issuer:
            _check_oidc(self)
        if self.oidc_session_key:
            _check_session_key(self.oidc_session_key)
        if bool(self.triton_tls_cert) != bool(self.triton_tls_key):
            raise SettingsError("set triton_tls_cert and triton_tls_key together (the gateway's client "
                                "certificate for Triton)")

    @property
    def triton_grpc_url(self) -> str:
        return f"{self.triton_host}:{self.triton_grpc_port}"

    @property
    def triton_endpoints(self) -> tuple[str, ...]:
        """Every Triton gRPC endpoint the gateway and index builds use: triton_urls, else triton_dns (the name
        itself until its addresses are looked up: cxr.triton.discovery), else the single default."""
        return self.triton_urls or ((self.triton_dns,) if self.triton_dns else (self.triton_grpc_url,))

    @property
    def gateway_address(self) -> str:
        return f"{self.gateway_host}:{self.gateway_port}"

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def index_path(self, model: str) -> Path:
        return self.index_dir / model

    def reports_path(self, model: str) -> Path:
        """The model's report ledger (cxr.reports.ledger), beside its index so a rebuild keeps it."""
        return (self.reports_dir or self.index_dir / "reports") / f"{model}.sqlite"

    @property
    def triton_http_url(self) -> str:
        return f"{self.triton_host}:{self.triton_http_port}"


# Numbers a setting may take (inclusive). A value outside would start a gateway that refuses every
# call (max_concurrent_rpcs = 0, default_deadline_s = -1) or silently turns a protection off
# (rate_limit_per_s = -5), so it is refused at start with the setting's name.
PORT = (0, 65535)
RANGES: dict[str, tuple[float, float]] = {
    "triton_http_port": (1, 65535), "triton_grpc_port": (1, 65535), "triton_metrics_port": (1, 65535),
    "gateway_port": PORT, "http_port": PORT, "metrics_port": PORT, "reports_mllp_port": PORT,
    "reports_poll_s": (0.05, 3600), "index_changes_poll_s": (0.01, 60), "index_compact_rows": (1, 10**8),
    "triton_dns_refresh_s": (0.1, 3600),
    "thumbnail_cache_mb": (0, 1 << 20), "search_batch_max": (1, 4096), "search_batch_wait_ms": (0, 1000),
    "text_cache_entries": (0, 10**8), "audit_max_bytes": (1 << 16, 1 << 40),
    "max_concurrent_rpcs": (1, 100_000), "max_concurrent_rpcs_per_client": (1, 100_000),
    "rate_limit_per_s": (0, 10**6), "rate_limit_burst": (1, 10**6),
    "default_deadline_s": (0.001, 86_400), "max_decode_queue": (1, 100_000), "max_image_pixels": (1, 10**9),
    "drain_grace_s": (0, 3600), "jwt_max_ttl_s": (60, 366 * 86_400),
    "http_header_timeout_s": (0.1, 600), "http_body_timeout_s": (0.1, 3600), "http_keepalive_s": (0.1, 600),
    "http_max_connections": (1, 100_000), "max_concurrent_uploads": (1, 10_000),
    "max_image_side": (1, 1 << 20), "max_image_aspect": (1, 1000), "max_decoding_pixels": (1, 10**10),
}


def _check_triton_dns(settings) -> None:
    if settings.triton_urls:
        raise SettingsError("set triton_dns (one name, every address of it) or triton_urls (a fixed list), not both")
    host, _, port = settings.triton_dns.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise SettingsError(f"triton_dns = {settings.triton_dns!r}: give host:port, e.g. "
                            "CXR_TRITON_DNS=triton-pods.cxr.svc.cluster.local:8001")


def _check_oidc(settings) -> None:
    if settings.auth != "token":
        raise SettingsError("oidc_issuer is set: set auth = \"token\" too (a signed-in session is a credential the "
                            "gateway checks like a token)")
    if not settings.oidc_client_id:
        raise SettingsError("oidc_issuer is set: set oidc_client_id to the client id the provider gave this gateway")
    _check_url("oidc_issuer", settings.oidc_issuer)
    if settings.oidc_redirect_url:
        _check_url("oidc_redirect_url", settings.oidc_redirect_url)
    if "openid" not in settings.oidc_scopes.split():
        raise SettingsError(f"oidc_scopes = {settings.oidc_scopes!r} lacks 'openid': OpenID Connect needs it "
                            "(e.g. \"openid profile\")")
    if not settings.oidc_roles_claim.strip():
        raise SettingsError("oidc_roles_claim is empty: name the claim that carries roles or groups (\"roles\")")
    role_scopes(settings.oidc_role_scopes)
    if not settings.oidc_session_key and not is_loopback(settings.gateway_host):
        raise SettingsError(f"oidc_issuer is set and the gateway listens beyond loopback ({settings.gateway_host}): "
                            "set oidc_session_key (CXR_OIDC_SESSION_KEY) to a secret every replica shares, e.g. "
                            "`openssl rand -base64 32`; without it a session is known only to the process that "
                            "opened it, and a sign-in that comes back to another replica fails")


def _check_session_key(key: str) -> None:
    if len(key) < SESSION_KEY_MIN_CHARS or not key.isascii() or not key.isprintable():
        raise SettingsError(f"oidc_session_key: give at least {SESSION_KEY_MIN_CHARS} printable ASCII characters "
                            f"of a random secret, e.g. `openssl rand -base64 32` (it has {len(key)} characters)")


def _check_url(name: str, url: str) -> None:
    """https, or http on a loopback address (a provider on the same host, as in development)."""
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    host = host[1:].split("]", 1)[0] if host.startswith("[") else host.rsplit(":", 1)[0]
    if not host or scheme not in ("https", "http") or (scheme == "http" and not is_loopback(host)):
        raise SettingsError(f"{name} = {url!r}: give an https:// URL (http:// only on a loopback address, for "
                            "development)")


def role_scopes(text: str) -> dict[str, tuple[str, ...]]:
    """oidc_role_scopes, "radiologist=search,studies;clerk=search", as {role: scopes}."""
    mapping: dict[str, tuple[str, ...]] = {}
    for entry in filter(None, (part.strip() for part in text.split(";"))):
        role, _, scopes = entry.partition("=")
        names = tuple(s.strip() for s in scopes.split(",") if s.strip())
        if not role.strip() or not names or role.strip() in mapping:
            raise SettingsError(f"oidc_role_scopes: {entry!r} is not 'role=scope,scope' (or names a role twice); "
                                "write e.g. \"radiologist=search,studies;clerk=search\"")
        mapping[role.strip()] = names
    if not mapping:
        raise SettingsError("oidc_role_scopes is empty: map the provider's roles to scopes, e.g. "
                            "\"radiologist=search,studies;clerk=search\" (no role, no access)")
    return mapping


def _check_ranges(settings) -> None:
    for name, (low, high) in RANGES.items():
        value = getattr(settings, name)
        if not low <= value <= high:  # also refuses NaN
            raise SettingsError(f"{name} = {value!r} is out of range: set it (in cxr.toml or CXR_{name.upper()}) "
                                f"to a number from {_number(low)} to {_number(high)}")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
PATH_FIELDS = tuple(name for name, f in FIELDS.items() if "Path" in str(f.type))


def _coerce(name: str, value):
    kind = str(FIELDS[name].type)
    if value is None or (kind.endswith("| None") and str(value) == ""):
        return None
    try:
        if kind.startswith("tuple"):
            items = value.split(",") if isinstance(value, str) else value
            return tuple(str(item).strip() for item in items if str(item).strip())
        if kind == "bool":
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if "Path" in kind:
            return Path(value)
    except ValueError as exc:
        raise SettingsError(f"{name} = {value!r} is not a valid {kind}") from exc
    return str(value)


def _rooted(values: dict, root: Path) -> dict:
    """Relative paths (and a JWKS given as a file) are taken from the checkout's root."""
    for name in PATH_FIELDS:
        value = values.get(name, getattr(Settings, name, None))
        if isinstance(value, Path) and not value.is_absolute():
            values[name] = root / value
    jwks = values.get("jwt_jwks", "")
    if jwks and "://" not in jwks and not Path(jwks).is_absolute():
        values["jwt_jwks"] = str(root / jwks)
    return values


def load_settings(root: Path | None = None, environ: dict | None = None, config: str | None = None) -> Settings:
    """Settings for a checkout at `root` (default: the working directory). `config`: the text of a cxr.toml
    to read as if it were at `root` (a backup's, before it is restored there)."""
    root = Path.cwd() if root is None else root
    environ = os.environ if environ is None else environ
    values: dict = {}
    config_path = root / CONFIG_FILE
    if config is None and config_path.is_file():
        config = config_path.read_text()
    if config is not None:
        try:
            values.update(tomllib.loads(config).get("cxr", {}))
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{config_path} is not valid TOML ({exc}): fix it, e.g. `[cxr]` then "
                                "`model = \"cxr-mini\"`, one setting a line") from exc
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise SettingsError(f"{config_path}: unknown keys {sorted(unknown)}; known: {sorted(FIELDS)}")
    for name in FIELDS:
        env_name = "CXR_" + name.upper()
        if env_name in environ:
            values[name] = environ[env_name]
    values = {name: _coerce(name, value) for name, value in values.items()}
    return Settings(**_rooted(values, root))


def to_environment(settings: Settings) -> dict[str, str]:
    """CXR_* variables that reproduce `settings` in a child process (the client token stays out)."""
    values = dataclasses.asdict(settings)
    values.pop("token")
    return {"CXR_" + name.upper(): _as_text(value) for name, value in values.items()}


def _as_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback IP address (127.0.0.0/8, ::1). A name that merely starts with "127."
    (127.0.0.1.nip.io, 127.evil.example) is any host a DNS server says it is."""
    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
