"""gRPC metadata keys the gateway sends and its clients read, named once for both sides."""

REQUEST_ID_KEY = "x-request-id"  # trailer: the gateway's id of the call, for audit and bug reports
# Trailer of a rate-limit refusal: milliseconds until a retry may pass. Deprecated: the error's google.rpc.RetryInfo
# says the same (gateway/error_details.py); the gateway sends both for one more release, then only RetryInfo.
RETRY_AFTER_KEY = "retry-after-ms"
