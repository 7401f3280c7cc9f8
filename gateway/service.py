"""The Retrieval service: validate, preprocess, embed through Triton, search the index, join metadata; and the
administrators' deletions, committed through the index's store backend."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import time

import numpy as np

from cxr import __version__, registry
from cxr.catalog import ExportedModel
from cxr.errors import CxrError, InvalidArgumentError, UnknownModelError
from cxr.images import ImageLimits, Region, dicom_identity, is_dicom, preprocess
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from cxr.store.deletions import STUDY, Deletion
from cxr.store.errors import ImagesNotFoundError
from cxr.store.interface import Filter, VectorStore
from cxr.suggestions import Calibration
from gateway import calls, hits, paging, refine
from gateway.admission import MAX_BATCH_QUERIES, DecodeQueue
from gateway.errors import grpc_errors
from gateway.indexes import IndexSet
from gateway.request_errors import ImageNotFoundError, InvalidRequestError, StudyNotFoundError, at_field, field_of
from gateway.thumbnails import MEDIA_TYPE, Thumbnails, size_of

MAX_TOP_K = 1000
MAX_TEXT_CHARS = 10_000
MAX_IMAGE_BYTES = 40 * 1024 * 1024
DEFAULT_TOP_K = 10  # what top_k = 0 (unset) means
# A study's fields GetStudy returns under the same names; patient identifiers only here (`studies` scope).
STUDY_COLUMNS = ("findings", "impression", "indication", "study_instance_uid", "accession_number", "study_date",
                 "patient_id", "patient_name", "report_status", "report_time")


class RetrievalService(pb_grpc.RetrievalServicer):
    def __init__(self, catalog: dict[str, ExportedModel], indexes: IndexSet, embedder, active_model: str,
                 decoder: DecodeQueue, image_limits: ImageLimits, links: hits.ViewerLinks = hits.ViewerLinks(""),
                 thumbnails: Thumbnails | None = None):
        self.catalog = catalog
        self.indexes = indexes
        self.embedder = embedder
        self.active_model = active_model
        self.decoder = decoder  # image decoding is CPU work: off the event loop, in a bounded queue
        self.image_limits = image_limits  # checked from each upload's header before decoding
        self.links = links
        self.thumbnails = thumbnails

    @grpc_errors
    async def SearchByText(self, request, context):
        return await self._search_text(request, calls.time_remaining(context))

    @grpc_errors
    async def SearchByImage(self, request, context):
        return await self._search_image(request, calls.time_remaining(context))

    @grpc_errors
    async def BatchSearch(self, request, context):
        if not 1 <= len(request.queries) <= MAX_BATCH_QUERIES:
            raise InvalidRequestError(f"a batch holds 1 to {MAX_BATCH_QUERIES} queries, not {len(request.queries)}",
                                      "queries")
        timeout = calls.time_remaining(context)
        decoding = asyncio.Semaphore(self.decoder.threads)  # one batch does not fill the decode queue alone
        searches = [_numbered(i, q.WhichOneof("query") or "text",
                              self._search_text(q.text, timeout) if q.WhichOneof("query") == "text"
                              else self._search_image(q.image, timeout, decoding))
                    for i, q in enumerate(request.queries)]
        return pb.BatchSearchResponse(results=await asyncio.gather(*searches))

    @grpc_errors
    async def ListModels(self, request, context):
        infos = []
        for name in registry.list_models():
            spec, model = registry.get_model(name), self.catalog.get(name)
            store = self._served_store(name) if model else None
            infos.append(pb.ModelInfo(
                name=name, family=spec.family.name, embed_dim=spec.embed_dim, image_size=spec.image_size,
                context_length=spec.context_length, active=name == self.active_model, exported=model is not None,
                ready=bool(model) and await self.embedder.is_ready(model),
                index_size=store.count if store else 0, index_bytes=store.size_bytes if store else 0,
                index_type=store.index_type if store else "", notes=spec.notes))
        return pb.ListModelsResponse(models=infos, server_version=__version__)

    @grpc_errors
    async def GetStudy(self, request, context):
        model = self._model(request.model)
        rows = await asyncio.to_thread(self.indexes.index(model.name).store.study, request.study_uid)
        if not rows:
            raise StudyNotFoundError(f"the study named in study_uid is not in the {model.name} index")
        first = rows[0]
        return pb.Study(study_uid=request.study_uid, labels=first.get("labels", []),
                        image_ids=[r["image_id"] for r in rows], viewer_url=self.links.url(first),
                        labels_derived=bool(first.get("labels_derived")),
                        **{name: first.get(name) or "" for name in STUDY_COLUMNS})

    @grpc_errors
    async def GetThumbnail(self, request, context):
        model = self._model(request.model)
        try:
            size = size_of(request.size)
        except ValueError as exc:
            raise InvalidRequestError(str(exc), "size") from exc
        item = self.thumbnails.cached(model.name, request.image_id, size) if self.thumbnails else None
        if item is None:
            row = await asyncio.to_thread(self.indexes.index(model.name).store.image, request.image_id)
            if row is None:
                raise ImageNotFoundError(f"the image named in image_id is not in the {model.name} index")
            if self.thumbnails is None:
                raise ImageNotFoundError("this gateway renders no thumbnails")
            with calls.stage("decode"):
                item = await self.decoder.run(self.thumbnails.make, model.name, row, size)
        data, width, height = item
        return pb.Thumbnail(image_id=request.image_id, media_type=MEDIA_TYPE, data=data, width=width, height=height)

    @grpc_errors
    async def GetSearchOptions(self, request, context):
        model = self._model(request.model)
        store = self.indexes.index(model.name).store
        spec = registry.get_model(model.name)
        return pb.SearchOptions(model=model.name, demo=spec.not_clinical, notes=spec.notes, labels=store.labels,
                                projections=store.projections, index_size=store.count)

    @grpc_errors
    async def DeleteStudy(self, request, context):
        return await self._delete(request.model, Deletion.study(request.study_uid))

    @grpc_errors
    async def DeleteImage(self, request, context):
        return await self._delete(request.model, Deletion.image(request.image_id))

    async def _delete(self, model_name: str, deletion: Deletion):
        """Answered only once the index in service has taken the commit in (IndexSet.apply), so that no search
        answered after the acknowledgement returns what was deleted."""
        model = self._model(model_name)
        with calls.stage("commit"):
            committed = await asyncio.to_thread(self.indexes.apply, model.name, deletion.change())
        deletion.done(committed, model.name)
        call = calls.current()
        if call is not None and deletion.field == STUDY:
            call.study_uids.append(deletion.name)  # the audit line names the study deleted
        answer = pb.DeleteStudyResponse if deletion.field == STUDY else pb.DeleteImageResponse
        return answer(deleted=committed.deleted, generation=committed.generation)

    async def _search_text(self, request, timeout) -> pb.SearchResponse:
        text = request.text.strip()
        if not text:
            raise InvalidRequestError("text is empty: send a query such as 'small left pleural effusion'", "text")
        if len(request.text) > MAX_TEXT_CHARS:
            raise InvalidRequestError(f"text is {len(request.text)} characters; the limit is {MAX_TEXT_CHARS} "
                                      "(the encoders read at most a few hundred tokens)", "text")
        excluded = refine.modifier(request.exclude_text, "exclude_text")
        judged = refine.feedback_ids(request.feedback)
        model, top_k, searcher = self._prepare(request)
        vectors = await self.embedder.embed_texts(model, [text, excluded] if excluded else [text], timeout)
        vector = refine.steered(vectors[0], vectors[1], -refine.EXCLUDE_TEXT_WEIGHT) if excluded else vectors[0]
        vector = await self._fed_back(searcher, vector, *judged)
        return await self._respond(model, searcher, vector, top_k, request)

    async def _search_image(self, request, timeout, decoding: asyncio.Semaphore | None = None) -> pb.SearchResponse:
        _check_image_source(request)
        region = _region(request)
        with_text = refine.modifier(request.with_text, "with_text")
        judged = refine.feedback_ids(request.feedback)
        model, top_k, searcher = self._prepare(request)
        _refuse_without_patient(request)
        excluded = await self._excluded(request, searcher)
        if request.image_id:
            vector = (await self._archived(searcher, [request.image_id], "image_id"))[0]
        else:
            pixels = await self._decoded(request, model, region, timeout, decoding)
            (vector,) = await self.embedder.embed_images(model, pixels[np.newaxis], timeout)
        if with_text:
            (words,) = await self.embedder.embed_texts(model, [with_text], timeout)
            vector = refine.steered(vector, words, refine.WITH_TEXT_WEIGHT)
        vector = await self._fed_back(searcher, vector, *judged)
        return await self._respond(model, searcher, vector, top_k, request, excluded, suggest=True)

    async def _excluded(self, request, searcher) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The patients and studies an image query leaves out: its DICOM's, or its archived image's."""
        if not (request.exclude_same_patient or request.exclude_same_study):
            return (), ()
        if request.image_id:
            patient, study = await asyncio.to_thread(archived_identity, searcher.store, request.image_id)
            source = "the archived image named in image_id has no"
        else:
            with calls.stage("decode"):
                patient, study = await self.decoder.run(dicom_identity, bytes(request.image), self.image_limits)
            source = "the DICOM query carries no"
        for asked, value, field, what in ((request.exclude_same_patient, patient, "exclude_same_patient", "PatientID"),
                                          (request.exclude_same_study, study, "exclude_same_study",
                                           "StudyInstanceUID")):
            if asked and not value:
                raise InvalidRequestError(f"{source} {what} to exclude: leave {field} out", field)
        return ((patient,) if request.exclude_same_patient else ()), ((study,) if request.exclude_same_study else ())

    async def _decoded(self, request, model, region: Region | None, timeout, decoding) -> np.ndarray:
        deadline = None if timeout is None else time.monotonic() + timeout
        async with decoding or contextlib.nullcontext():
            with calls.stage("decode"):
                try:
                    return await self.decoder.run(preprocess, bytes(request.image), model.image_size,
                                                  self.image_limits, self.decoder.pixels, deadline, region)
                except InvalidArgumentError as error:
                    raise at_field(error, "image")

    async def _fed_back(self, searcher, vector: np.ndarray, relevant: list[str], not_relevant: list[str]):
        """The query moved by the images judged in earlier rounds (refine.rocchio); unchanged with none."""
        if not relevant and not not_relevant:
            return vector
        return refine.rocchio(vector, await self._archived(searcher, relevant, refine.RELEVANT),
                              await self._archived(searcher, not_relevant, refine.NOT_RELEVANT))

    async def _archived(self, searcher, image_ids: list[str], field: str) -> np.ndarray:
        """The stored vectors of archived images named in `field`; one not indexed is NOT_FOUND, by position
        (an image id may carry a patient number: it is not quoted)."""
        if not image_ids:
            return np.zeros((0, 0), np.float32)
        try:
            return await asyncio.to_thread(searcher.store.vectors, image_ids)
        except ImagesNotFoundError as error:
            position = image_ids.index(error.missing[0])
            where = field if field == "image_id" else f"{field}[{position}]"
            raise at_field(ImageNotFoundError(f"the image named in {where} is not in the index "
                                              f"({len(error.missing)} of {len(image_ids)} not found)"), field) \
                from error

    def _prepare(self, request):
        """Model, top_k and index of a query, with bad fields and filters refused before any embedding."""
        model = self._model(request.model)
        top_k = _top_k(request.top_k)
        searcher = self.indexes.index(model.name)
        if request.page_token:  # a token of another query is refused before any embedding
            paging.offset_of(searcher.store, paging.fingerprint(model.name, request), request.page_token)
        flt = _filter(request.filters)  # dates checked here, naming their field
        try:
            searcher.store.check_filter(flt)
        except InvalidArgumentError as error:
            raise at_field(error, "filters")
        return model, top_k, searcher

    async def _respond(self, model, searcher, vector, top_k, request, excluded=((), ()),
                       suggest: bool = False) -> pb.SearchResponse:
        flt = _filter(request.filters, *excluded)
        query = functools.cache(lambda: paging.fingerprint(model.name, request))  # hashed only if a page needs it
        offset = paging.offset_of(searcher.store, query(), request.page_token) if request.page_token else 0
        top_k = min(top_k, paging.MAX_DEPTH - offset)
        fetch = min(offset + top_k + 1, paging.MAX_DEPTH)  # one more than the page: is there a next one?
        calibration = searcher.store.calibration if suggest else None
        voters = None
        with calls.stage("search"):
            if request.group_by_study:
                found = await self._by_study(searcher, vector, fetch, flt)
            else:
                shared = calibration is not None and not flt  # one search finds the hits and the voters
                fetched = await searcher.search(vector, max(fetch, calibration.k) if shared else fetch, flt)
                voters = fetched if shared else None
                found = hits.ranked(fetched[:fetch], self.links)
            if calibration is not None and voters is None:
                # The voters leave out what the query excludes (the calibration was fitted without the
                # query's own patient), nothing else.
                voters = await searcher.search(vector, calibration.k, Filter.of(exclude_patients=excluded[0],
                                                                                exclude_studies=excluded[1]))
        page = found[offset:offset + top_k]
        following = paging.token(searcher.store, query(), offset + top_k) if len(found) > offset + top_k else ""
        call = calls.current()
        if call is not None:
            call.study_uids.extend(hit.study_uid for hit in page)
            if not call.sees_patient_data:
                hits.redact(page, searcher.store.opaque_id)
        return pb.SearchResponse(model=model.name, hits=page, next_page_token=following,
                                 suggestions=_suggestions(calibration, voters))

    async def _by_study(self, searcher, vector, top_k: int, flt: Filter) -> list[pb.Hit]:
        """Images enough for `top_k` studies: fetched in growing rounds while studies repeat."""
        fetch = hits.study_fetch(top_k, searcher.store.count)
        while True:
            found = await searcher.search(vector, fetch, flt)
            grouped = hits.by_study(found, top_k, self.links)
            if len(grouped) >= top_k or len(found) < fetch or fetch >= hits.GROUP_MAX_FETCH:
                return grouped
            fetch = min(fetch * hits.GROUP_FETCH_FACTOR, hits.GROUP_MAX_FETCH)

    def _served_store(self, name: str) -> VectorStore | None:
        try:
            return self.indexes.index(name).store
        except CxrError:  # no index, or a refused one: ListModels shows it as empty
            return None

    def _model(self, name: str) -> ExportedModel:
        name = name or self.active_model
        if name not in self.catalog:
            known = registry.list_models()
            where = "in the registry" if name not in known else "exported on this gateway"
            raise UnknownModelError(f"the model named in `model` is not {where}; serving: {sorted(self.catalog)}. "
                                    f"Available: {known}")
        return self.catalog[name]


async def _numbered(position: int, kind: str, search):
    """A batch query's error names its place in the batch, in its message and in the field it names."""
    try:
        return await search
    except CxrError as error:
        numbered = type(error)(f"query {position}: {error}")
        if field_of(error):
            numbered.field = f"queries[{position}].{kind}.{field_of(error)}"
        raise numbered from error


def _suggestions(calibration: Calibration | None, voters) -> list[pb.Suggestion]:
    """What the k images nearest to an image query carry, calibrated (cxr.suggestions): evidence from similar
    cases, never a diagnosis. The voters are the k nearest whatever the query's projection and label filters
    (a label filter would make its own label unanimous), so the calibration fitted on unfiltered neighbours
    holds."""
    if calibration is None:
        return []
    voters = voters[:calibration.k]
    found = calibration.suggest([score for _, score, _ in voters], [row.get("labels") or () for _, _, row in voters])
    return [pb.Suggestion(label=s.label, probability=s.probability, neighbours=s.neighbours) for s in found]


def _check_image_source(request) -> None:
    """Exactly one of the uploaded bytes and an archived image's id."""
    if request.image and request.image_id:
        raise InvalidRequestError("image and image_id are both set: send the bytes or name an archived image, "
                                  "not both", "image_id")
    if not request.image and not request.image_id:
        raise InvalidRequestError("image is empty: send PNG, JPEG or DICOM bytes, or an archived image's "
                                  "image_id", "image")
    if len(request.image) > MAX_IMAGE_BYTES:
        raise InvalidRequestError(f"image is {len(request.image) / 2**20:.1f} MB; the limit is "
                                  f"{MAX_IMAGE_BYTES // 2**20} MB: send the original file, not a raw dump", "image")


def _region(request) -> Region | None:
    if not request.HasField("roi"):
        return None
    if request.image_id:
        raise InvalidRequestError("roi crops uploaded image bytes; with image_id, upload the image instead to "
                                  "search with a region of it", "roi")
    roi = request.roi
    try:
        return Region(roi.x, roi.y, roi.width, roi.height)
    except InvalidArgumentError as error:
        raise at_field(error, "roi")


def _refuse_without_patient(request) -> None:
    """A PNG or JPEG upload names no patient or study: an exclusion asked of one is refused before decoding."""
    if request.image_id or is_dicom(bytes(request.image)):
        return
    for field, what, tag in (("exclude_same_patient", "patient", "PatientID"),
                             ("exclude_same_study", "study", "StudyInstanceUID")):
        if getattr(request, field):
            raise InvalidRequestError(f"{field} needs a DICOM query (its {tag}) or an archived image (image_id): "
                                      f"a PNG or JPEG has no {what} to exclude; leave it out", field)


def archived_identity(store: VectorStore, image_id: str) -> tuple[str, str]:
    """The patient id and study of an indexed image, for excluding them (never shown)."""
    row = store.image(image_id)
    if row is None:
        raise ImageNotFoundError("the image named in image_id is not in the index")
    return str(row.get("patient_id") or ""), str(row.get("study_uid") or "")


def _filter(filters, patients=(), studies=()) -> Filter:
    return Filter.of(filters.projections, filters.labels, _day(filters, "study_date_from"),
                     _day(filters, "study_date_to"), patients, studies)


def _day(filters, name: str) -> str:
    """A date bound as sent (DICOM DA, YYYYMMDD), checked; "" for none. A range that ends before it starts
    is refused: it would match nothing, silently."""
    value = getattr(filters, name)
    if value and not (len(value) == 8 and value.isdigit() and _is_date(value)):
        raise InvalidRequestError(f"filters.{name} must be a date as YYYYMMDD (DICOM DA), such as 20240131",
                                  f"filters.{name}")
    if name == "study_date_to" and value and filters.study_date_from and filters.study_date_from > value:
        raise InvalidRequestError("filters.study_date_to is before filters.study_date_from: the range is empty; "
                                  "swap them", "filters.study_date_to")
    return value


def _is_date(value: str) -> bool:
    try:
        datetime.date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return False
    return True


def _top_k(value: int) -> int:
    if value == 0:
        return DEFAULT_TOP_K
    if not 1 <= value <= MAX_TOP_K:
        raise InvalidRequestError(f"top_k must be between 1 and {MAX_TOP_K} (0: the default, {DEFAULT_TOP_K}), "
                                  f"not {value}", "top_k")
    return value
