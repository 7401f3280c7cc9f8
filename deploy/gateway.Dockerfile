# The gateway image (no Triton, no torch, no transformers): the `serve` and `milvus` extras at the pins of
# constraints.txt, the gRPC stubs generated from protos/, run as an unprivileged user.
#   docker build -f deploy/gateway.Dockerfile -t cxr-gateway:0.1.0 .
# It reads the model repository (manifests, tokenizers) and the indexes from mounted volumes and
# is configured with CXR_* variables: deploy/k8s/gateway-deployment.yaml and docker-compose.yml's
# `gateway` service show full sets.

FROM python:3.12-slim AS build
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml constraints.txt README.md ./
COPY protos protos
COPY cxr cxr
COPY gateway gateway
# The stubs are generated, never committed (Makefile `protos`); the same grpcio-tools pin.
RUN pip install -c constraints.txt grpcio-tools \
 && python -m grpc_tools.protoc -I protos --python_out=. --pyi_out=. --grpc_python_out=. \
        protos/cxr/retrieval/v1/retrieval.proto \
 && pip install -c constraints.txt '.[serve,milvus]' \
 && for heavy in torch transformers; do if pip show "$heavy" >/dev/null 2>&1; then \
        echo "$heavy was pulled in; the gateway must not need it (it belongs in the export extra)" >&2; exit 1; fi; done

FROM python:3.12-slim
# Settings paths are taken from the working directory; the deployment gives absolute ones.
WORKDIR /srv/cxr
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/tmp/huggingface \
    HF_HUB_OFFLINE=1
RUN groupadd --gid 10001 cxr && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin cxr \
 && install -d -o 10001 -g 10001 -m 2770 /var/log/cxr /var/cache/cxr/index-copy /var/lib/cxr/reports
# Where the audit trail, the index copies and the report ledgers go. A Docker volume mounted there starts as
# a copy of the folder, owner and mode included: group 10001 may write it whichever uid runs the container
# (docker-compose.yml runs it as the host user, CXR_UID, in group 10001).
COPY --from=build /opt/venv /opt/venv
COPY deploy/grpc_health_probe.py /opt/cxr/grpc_health_probe.py
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 50051 8080 8003
ENTRYPOINT ["python", "-m", "gateway.server"]
