"""Every error class is of one kind, and the kind says what the caller can do about it."""

import pytest

from cxr import dicomweb, errors
from cxr.archives import ArchiveError, ArchiveFileMissingError
from cxr.dev_pki import PkiError, SigningKeyMissingError
from cxr.gateway_process import GatewayPortInUseError
from cxr.images import DecodeBusyError, ImageTooLargeError, InvalidImageError
from cxr.private_copy import NoRoomError
from cxr.settings import SettingsError
from cxr.store import errors as store_errors
from cxr.store.milvus.records import MilvusLimitError
from cxr.triton import errors as triton_errors
from gateway import api_keys
from gateway.admission import OverloadedError
from gateway.audit_chain import AuditError
from gateway.auth import AuthConfigError, AuthError
from gateway.hits import ViewerTemplateError
from gateway.request_errors import ImageNotFoundError, InvalidRequestError, StudyNotFoundError
from gateway.thumbnails import PacsUnavailableError, ThumbnailSourceError
from gateway.tls import ExposureError
from indexing.build import NothingToIndexError
from training.data import TrainingDataError

KINDS = (errors.InvalidArgumentError, errors.NotFoundError, errors.FailedPreconditionError,
         errors.ResourceExhaustedError, errors.UnavailableError, errors.UnauthenticatedError, errors.InternalError)
KIND_OF = {
    InvalidRequestError: errors.InvalidArgumentError,
    InvalidImageError: errors.InvalidArgumentError,
    ImageTooLargeError: errors.InvalidArgumentError,
    store_errors.UnknownFilterError: errors.InvalidArgumentError,
    store_errors.TooFewToTrainError: errors.InvalidArgumentError,
    MilvusLimitError: errors.InvalidArgumentError,
    errors.UnknownModelError: errors.NotFoundError,
    StudyNotFoundError: errors.NotFoundError,
    ImageNotFoundError: errors.NotFoundError,
    ThumbnailSourceError: errors.NotFoundError,
    dicomweb.NoMatchingInstancesError: errors.NotFoundError,
    ArchiveFileMissingError: errors.NotFoundError,
    SigningKeyMissingError: errors.NotFoundError,
    api_keys.UnknownApiKeyIdError: errors.NotFoundError,
    api_keys.ApiKeyRequestError: errors.InvalidArgumentError,
    api_keys.ApiKeyFileError: errors.FailedPreconditionError,
    api_keys.ApiKeyRefusedError: errors.UnauthenticatedError,
    triton_errors.TritonTlsFileError: errors.FailedPreconditionError,
    GatewayPortInUseError: errors.FailedPreconditionError,
    dicomweb.PacsArgumentError: errors.InvalidArgumentError,
    store_errors.IndexMismatchError: errors.FailedPreconditionError,
    store_errors.IndexMissingError: errors.FailedPreconditionError,
    store_errors.IndexCorruptError: errors.FailedPreconditionError,
    store_errors.IndexUnreadableError: errors.FailedPreconditionError,
    store_errors.IndexReadOnlyError: errors.FailedPreconditionError,
    SettingsError: errors.FailedPreconditionError,
    errors.CheckpointUnavailableError: errors.FailedPreconditionError,
    errors.ExportError: errors.FailedPreconditionError,
    ArchiveError: errors.FailedPreconditionError,
    TrainingDataError: errors.FailedPreconditionError,
    NothingToIndexError: errors.FailedPreconditionError,
    ViewerTemplateError: errors.FailedPreconditionError,
    ExposureError: errors.FailedPreconditionError,
    AuthConfigError: errors.FailedPreconditionError,
    AuditError: errors.FailedPreconditionError,
    PkiError: errors.FailedPreconditionError,
    dicomweb.PacsAuthError: errors.FailedPreconditionError,
    dicomweb.PacsTlsError: errors.FailedPreconditionError,
    OverloadedError: errors.ResourceExhaustedError,
    DecodeBusyError: errors.ResourceExhaustedError,
    NoRoomError: errors.ResourceExhaustedError,
    store_errors.StoreUnavailableError: errors.UnavailableError,
    PacsUnavailableError: errors.UnavailableError,
    dicomweb.PacsUnreachableError: errors.UnavailableError,
    AuthError: errors.UnauthenticatedError,
    dicomweb.InstanceFetchError: errors.InternalError,
    triton_errors.TritonStartError: errors.FailedPreconditionError,
    triton_errors.TritonUnavailableError: errors.UnavailableError,
    triton_errors.TritonEndpointDownError: errors.UnavailableError,
    triton_errors.TritonDeadlineError: errors.UnavailableError,
    triton_errors.TritonFailedError: errors.InternalError,
}
# Bases that callers catch, kept beside the kind.
ALSO = {InvalidRequestError: ValueError, InvalidImageError: ValueError, store_errors.UnknownFilterError: ValueError,
        SettingsError: ValueError, ArchiveError: ValueError, ArchiveFileMissingError: ValueError, TrainingDataError: ValueError,
        MilvusLimitError: ValueError, ViewerTemplateError: ValueError, errors.UnknownModelError: KeyError,
        ThumbnailSourceError: LookupError}


@pytest.mark.parametrize("error, kind", KIND_OF.items(), ids=lambda x: x.__name__)
def test_each_error_is_of_its_kind_and_no_other(error, kind):
    assert [k for k in KINDS if issubclass(error, k)] == [kind]


@pytest.mark.parametrize("error, base", ALSO.items(), ids=lambda x: x.__name__)
def test_errors_keep_the_builtin_bases_callers_catch(error, base):
    assert issubclass(error, base)


@pytest.mark.parametrize("kind", KINDS, ids=lambda x: x.__name__)
def test_each_kind_is_a_cxr_error_that_says_what_to_do(kind):
    assert kind.__bases__ == (errors.CxrError,)
    assert kind.__doc__ and ":" in kind.__doc__


def test_an_unknown_model_reads_as_its_message_not_as_a_quoted_key():
    assert str(errors.UnknownModelError("no model named x")) == "no model named x"
