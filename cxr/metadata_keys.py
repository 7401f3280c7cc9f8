"""gRPC metadata keys the gateway sends and its clients read, named once for both sides."""

REQUEST_ID_KEY = "x-request-id"  # trailer: the gateway's id of the call, for audit and bug reports
RETRY_AFTER_KEY = "retry-after-ms"  # trailer of a rate-limit refusal: milliseconds until a retry may pass
