"""The google.rpc.Status a failed call carries in its `grpc-status-details-bin` trailer, read with google.rpc's
messages from a descriptor pool of this package's own (built from google_rpc.binpb, made at build time):
no googleapis-common-protos needed, and none clashed with where an application has it too."""

from __future__ import annotations

from importlib import resources

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

STATUS_DETAILS_KEY = "grpc-status-details-bin"
_DESCRIPTORS = descriptor_pb2.FileDescriptorSet.FromString(
    resources.files("cxr_client._proto").joinpath("google_rpc.binpb").read_bytes())
_POOL = descriptor_pool.DescriptorPool()
for _file in _DESCRIPTORS.file:  # protoc writes them dependencies first
    _POOL.AddSerializedFile(_file.SerializeToString())


def message_class(full_name: str):
    """The message class of a google.rpc (or google.protobuf) type in the private pool; KeyError if none."""
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(full_name))


Status = message_class("google.rpc.Status")


def status(code: int, trailing_metadata) -> object | None:
    """The google.rpc.Status of a failed call, when its trailers hold one of the call's own code."""
    raw = next((value for key, value in trailing_metadata or () if key == STATUS_DETAILS_KEY), None)
    if not isinstance(raw, bytes):
        return None
    try:
        found = Status.FromString(raw)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError: a peer's bad bytes mean no details, no crash
        return None
    return found if found.code == code else None


def unpacked(found) -> list:
    """The detail messages of `found` whose types this package knows (google.rpc's); others are skipped."""
    messages = []
    for packed in found.details:
        try:
            kind = message_class(packed.type_url.rpartition("/")[2])
            messages.append(kind.FromString(packed.value))
        except Exception:  # noqa: BLE001 - an unknown type (KeyError) or bad bytes (DecodeError): skipped
            continue
    return messages
