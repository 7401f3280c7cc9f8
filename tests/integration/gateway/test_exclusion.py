"""Same-patient exclusion and paging on the real NIH index behind a real gateway and Triton: NIH image
00000116_017, asked as a DICOM of its patient (116), finds its patient's other images among its nearest
unless exclude_same_patient is set; then none, on any page, and top_k is still filled."""

import pytest

from cxr.retrieval.v1 import retrieval_pb2 as pb
from support.dicom_query import NIH, PATIENT, QUERY, patients, query_dicom

pytestmark = pytest.mark.triton


def of_patient(hits) -> list[str]:
    owner = patients()
    return [hit.image_id for hit in hits if owner[hit.image_id] == PATIENT]


def test_the_query_s_patient_is_left_out_of_every_page_and_top_k_is_filled(stub):
    dicom = query_dicom()
    png = stub.SearchByImage(pb.SearchByImageRequest(image=next(NIH.glob(f"*/*/{QUERY}")).read_bytes(), top_k=10))
    before = stub.SearchByImage(pb.SearchByImageRequest(image=dicom, top_k=10), timeout=60)
    assert [h.image_id for h in before.hits] == [h.image_id for h in png.hits]  # the DICOM is the PNG's pixels
    request = pb.SearchByImageRequest(image=dicom, top_k=10, exclude_same_patient=True)
    after, pages = [], 0
    while pages < 5:
        answer = stub.SearchByImage(request, timeout=60)
        assert len(answer.hits) == 10 and PATIENT not in str(answer).replace(answer.next_page_token, "")
        after += answer.hits
        pages += 1
        request.page_token = answer.next_page_token
    print(f"\n{QUERY} top 10, DICOM of patient {PATIENT}: {len(of_patient(before.hits))} of its patient "
          f"({'itself first' if before.hits[0].image_id == QUERY else 'itself not first'}); with "
          f"exclude_same_patient: {len(of_patient(after[:10]))} in the top 10, {len(of_patient(after))} in 5 pages")
    assert before.hits[0].image_id == QUERY and len(of_patient(before.hits)) >= 2
    assert of_patient(after) == [] and len({h.image_id for h in after}) == 50
    grouped = stub.SearchByImage(pb.SearchByImageRequest(image=dicom, top_k=20, exclude_same_patient=True,
                                                         group_by_study=True), timeout=60)
    assert len(grouped.hits) == 20 and of_patient(grouped.hits) == []
