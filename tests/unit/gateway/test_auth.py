"""Credentials: JWTs (RS256/ES256 from a JWKS) and API keys; each refusal says why; the auth interceptor
lets only the `studies` scope see patient data."""

import json
import time

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway import api_keys, auth, calls, sessions
from support.interceptor_server import search

ISSUER, AUDIENCE = "https://idp.hospital.example", "cxr-retrieval"


def _jwks_file(tmp_path, keys: dict) -> str:
    entries = []
    for kid, key in keys.items():
        algorithm = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
        entries.append(dict(json.loads(algorithm.to_jwk(key.public_key())), kid=kid))
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": entries}))
    return str(path)


@pytest.fixture(scope="module")
def keys():
    return {"ec": ec.generate_private_key(ec.SECP256R1()), "rsa": rsa.generate_private_key(65537, 2048)}


@pytest.fixture
def verifier(tmp_path, keys):
    return auth.JwtVerifier(auth.JwksKeys(_jwks_file(tmp_path, keys)), ISSUER, AUDIENCE)


def _token(key, kid, alg, **overrides):
    now = int(time.time())
    claims = {"sub": "dr.house", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "nbf": now, "exp": now + 600,
              "scope": "search studies"}
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


@pytest.mark.parametrize("kid, alg", [("ec", "ES256"), ("rsa", "RS256")])
def test_a_valid_jwt_gives_its_subject_and_scopes(verifier, keys, kid, alg):
    principal = verifier.verify(_token(keys[kid], kid, alg))
    assert principal == auth.Principal("dr.house", "jwt", frozenset({"search", "studies"}))


def test_scopes_may_come_as_an_scp_list(verifier, keys):
    principal = verifier.verify(_token(keys["ec"], "ec", "ES256", scope=None, scp=["admin"]))
    assert principal.scopes == {"admin"}


def test_a_small_clock_skew_is_tolerated(verifier, keys):
    assert verifier.verify(_token(keys["ec"], "ec", "ES256", exp=int(time.time()) - 5)).id == "dr.house"


@pytest.mark.parametrize("change, words", [
    (dict(exp=int(time.time()) - 3600), "expired"),
    (dict(nbf=int(time.time()) + 3600), "not valid yet"),
    (dict(aud="another-service"), "another audience"),
    (dict(iss="https://evil.example"), "another issuer"),
    (dict(exp=None), "exp"),
    (dict(sub=None), "sub"),
])
def test_bad_claims_are_refused_with_the_reason(verifier, keys, change, words):
    with pytest.raises(auth.AuthError, match=words):
        verifier.verify(_token(keys["ec"], "ec", "ES256", **change))


def test_a_token_signed_by_another_key_is_refused(verifier):
    stranger = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(auth.AuthError, match="signature"):
        verifier.verify(_token(stranger, "ec", "ES256"))
    with pytest.raises(auth.AuthError, match="unknown key"):
        verifier.verify(_token(stranger, "other", "ES256"))


@pytest.mark.parametrize("kid, alg, signer", [("ec", "RS256", "rsa"), ("rsa", "ES256", "ec")])
def test_a_token_whose_algorithm_is_not_its_keys_family_is_refused_not_crashed(verifier, keys, kid, alg, signer):
    with pytest.raises(auth.AuthError, match="not signed by this identity provider"):
        verifier.verify(_token(keys[signer], kid, alg))


@pytest.mark.parametrize("lifetime_s, iat", [(25 * 3600, True), (100 * 365 * 86400, True), (2 * 86400, False)])
def test_tokens_valid_longer_than_the_maximum_are_refused(verifier, keys, lifetime_s, iat):
    now = int(time.time())
    token = _token(keys["ec"], "ec", "ES256", exp=now + lifetime_s, iat=now if iat else None)
    with pytest.raises(auth.AuthError, match="jwt_max_ttl_s"):
        verifier.verify(token)
    assert verifier.verify(_token(keys["ec"], "ec", "ES256", exp=now + 23 * 3600)).id == "dr.house"


def test_symmetric_and_unsigned_tokens_are_refused(verifier):
    with pytest.raises(auth.AuthError, match="not accepted"):
        verifier.verify(_token("a shared secret long enough for HS256 x", "ec", "HS256"))
    unsigned = jwt.encode({"sub": "x", "iss": ISSUER, "aud": AUDIENCE}, None, algorithm="none")
    with pytest.raises(auth.AuthError, match="not accepted"):
        verifier.verify(unsigned)


def test_garbage_is_refused(verifier):
    with pytest.raises(auth.AuthError, match="well-formed"):
        verifier.verify("not.a.token")


def test_the_authenticator_tells_api_keys_from_jwts(tmp_path, verifier, keys):
    path = tmp_path / "keys.json"
    record, key = api_keys.add(path, "pacs", ["search"])
    authenticator = auth.Authenticator(verifier, api_keys.ApiKeyStore(path))
    assert authenticator.verify(key) == auth.Principal(record.id, "api_key", frozenset({"search"}))
    assert authenticator.verify(_token(keys["ec"], "ec", "ES256")).kind == "jwt"
    with pytest.raises(auth.AuthError, match="not accepted by this gateway"):
        auth.Authenticator(verifier, None).verify(key)


def test_a_sign_in_session_is_a_credential_while_it_lasts(make_server, verifier):
    signed_in = sessions.SessionStore()
    ends = time.time() + 60
    clerk = signed_in.open(sessions.Identity("u-clerk", "kim", frozenset({"search"}), ends))
    authenticator = auth.Authenticator(None, None, signed_in)
    assert authenticator.verify(clerk) == auth.Principal("u-clerk", "session", frozenset({"search"}))
    server = make_server(auth.AuthInterceptor(authenticator))
    assert search(server.stub, metadata=(("authorization", f"Bearer {clerk}"),)) is not None
    signed_in.close(clerk)
    with pytest.raises(grpc.RpcError) as ended:
        search(server.stub, metadata=(("authorization", f"Bearer {clerk}"),))
    assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED and "sign in again" in ended.value.details()
    with pytest.raises(auth.AuthError, match="no oidc_issuer"):
        auth.Authenticator(verifier, None).verify(clerk)


@pytest.mark.parametrize("metadata, words", [((), "no credential"), ((("authorization", "Basic abc"),), "Bearer"),
                                             ((("authorization", "Bearer "),), "Bearer")])
def test_the_bearer_header_is_required(metadata, words):
    with pytest.raises(auth.AuthError, match=words):
        auth.bearer_token(metadata)


def test_every_rpc_of_the_service_has_a_scope():
    from cxr.retrieval.v1 import retrieval_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["Retrieval"]
    methods = {f"/{service.full_name}/{m.name}" for m in service.methods}
    assert methods <= set(auth.METHOD_SCOPES)
    assert all(auth.METHOD_SCOPES[m] for m in methods), "no Retrieval RPC may be public"


class TokenPerScopes:
    """An authenticator whose tokens are their scopes, comma-separated."""

    def verify(self, token):
        return auth.Principal("someone", "jwt", frozenset(token.split(",")))


class SeenByTheService(grpc.aio.ServerInterceptor):
    """After auth: what the service will read of the call."""

    def __init__(self):
        self.seen = []

    async def intercept_service(self, continuation, details):
        async def around(run, request, context):
            self.seen.append(calls.current().sees_patient_data)
            return await run()

        return calls.wrap_unary(await continuation(details), around)


def test_only_the_studies_scope_may_see_patient_data(make_server):
    seen = SeenByTheService()
    server = make_server(auth.AuthInterceptor(TokenPerScopes()), seen)
    for scopes in ("search", "search,studies", "search,admin"):
        search(server.stub, metadata=(("authorization", f"Bearer {scopes}"),))
    assert seen.seen == [False, True, False]
