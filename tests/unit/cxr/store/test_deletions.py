"""A deletion's Change, and its answers: refused when it names nothing, NOT_FOUND when nothing went."""

import pytest

from cxr.errors import InvalidArgumentError, NotFoundError
from cxr.store.deletions import Deletion
from cxr.store.interface import Change, Committed


def test_a_study_or_an_image_becomes_its_change():
    assert Deletion.study("1.2.3").change() == Change(study_uids=("1.2.3",))
    assert Deletion.image("00000002_000.png").change() == Change(image_ids=("00000002_000.png",))


@pytest.mark.parametrize("make, field", [(Deletion.study, "study_uid"), (Deletion.image, "image_id")])
def test_an_empty_name_is_refused_it_could_match_every_row_without_one(make, field):
    with pytest.raises(InvalidArgumentError, match=f"{field} is empty"):
        make("")


def test_a_commit_that_deleted_something_is_done():
    committed = Committed(generation=4, deleted=2)
    assert Deletion.study("s1").done(committed, "cxr-mini") is committed


@pytest.mark.parametrize("deletion, words", [(Deletion.study("s1"), "nothing indexed under that UID"),
                                             (Deletion.image("7"), "nothing indexed under that id")])
def test_a_commit_that_deleted_nothing_is_not_found_with_the_remedy(deletion, words):
    with pytest.raises(NotFoundError) as error:
        deletion.done(Committed(generation=5), "cxr-mini")
    message = str(error.value)
    assert words in message and "already deleted or never indexed" in message and "cxr-mini" in message
    assert deletion.name not in message  # the message quotes no identifier
