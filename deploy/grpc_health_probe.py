"""Exit 0 when the gateway in this container answers grpc.health.v1 (with --ready: answers SERVING).

The kubelet's own gRPC probe dials plaintext and brings no client certificate, so it cannot reach
a gateway that serves mutual TLS; Kubernetes runs this inside the container instead (an exec probe,
deploy/k8s/gateway-deployment.yaml). Health needs no token: the gateway leaves it open.

    python grpc_health_probe.py --ready --ca ca.crt --cert probe.crt --key probe.key \
        --server-name cxr-gateway.cxr.svc

Only grpc and grpc_health are imported, so a probe costs a fraction of a second of CPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING


def _channel(args: argparse.Namespace) -> grpc.Channel:
    address = f"127.0.0.1:{args.port}"
    if args.ca is None:
        return grpc.insecure_channel(address)
    key = args.key.read_bytes() if args.key else None
    cert = args.cert.read_bytes() if args.cert else None
    credentials = grpc.ssl_channel_credentials(args.ca.read_bytes(), key, cert)
    # The certificate names the Service, not 127.0.0.1: check it against that name.
    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    return grpc.secure_channel(address, credentials, options=options)


def check(args: argparse.Namespace) -> tuple[bool, str]:
    """(healthy, what was seen) for one health check of the gateway on this host."""
    with _channel(args) as channel:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                               timeout=args.timeout).status
        except grpc.RpcError as exc:
            return False, f"no answer: {exc.code().name} {exc.details()}"
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    return (status == SERVING or not args.ready), name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--ready", action="store_true",
                        help="succeed only on SERVING (default: on any answer, i.e. the process is alive)")
    parser.add_argument("--ca", type=Path, help="the CA that signed the gateway's certificate (TLS); none: plaintext")
    parser.add_argument("--cert", type=Path, help="client certificate, for a gateway with tls_client_ca")
    parser.add_argument("--key", type=Path, help="the client certificate's private key")
    parser.add_argument("--server-name", default="", help="a DNS name in the gateway's certificate")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    if bool(args.cert) != bool(args.key):
        parser.error("give --cert and --key together")
    healthy, seen = check(args)
    print(seen)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
