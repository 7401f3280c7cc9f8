"""An administrator's deletion of one study or one image from a model's index: the Change that says it, and
the answer when nothing was indexed under that name. The gateway's DeleteStudy and DeleteImage and
`cxr index delete` both go through here, so they refuse and answer alike."""

from __future__ import annotations

from dataclasses import dataclass

from cxr.errors import InvalidArgumentError, NotFoundError
from cxr.store.interface import Change, Committed

STUDY, IMAGE = "study_uid", "image_id"
WHAT = {STUDY: "UID", IMAGE: "id"}


class EmptyNameError(InvalidArgumentError, ValueError):
    """A deletion that names no study or image: an empty name could match every row that lacks one."""


class NothingIndexedError(NotFoundError):
    """No image is indexed under the study UID or image id a deletion names."""


@dataclass(frozen=True)
class Deletion:
    """Every image of one study (`field` = study_uid) or one image (`field` = image_id)."""

    field: str
    name: str

    def __post_init__(self):
        if self.field not in WHAT:
            raise ValueError(f"a deletion is by {' or '.join(WHAT)}, not {self.field}")
        if not self.name:
            raise EmptyNameError(f"{self.field} is empty: name the {'study' if self.field == STUDY else 'image'} "
                                 "to delete as a hit names it")

    @classmethod
    def study(cls, study_uid: str) -> Deletion:
        return cls(STUDY, study_uid)

    @classmethod
    def image(cls, image_id: str) -> Deletion:
        return cls(IMAGE, image_id)

    def change(self) -> Change:
        return Change(study_uids=(self.name,)) if self.field == STUDY else Change(image_ids=(self.name,))

    def done(self, committed: Committed, model: str) -> Committed:
        """`committed` when it deleted something; NothingIndexedError (NOT_FOUND) when it did not."""
        if committed.deleted:
            return committed
        raise NothingIndexedError(f"nothing indexed under that {WHAT[self.field]}; already deleted or never indexed "
                                  f"(the {model} index): check the {self.field}, as a hit names it, and the model")
