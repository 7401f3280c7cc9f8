"""What the report labeler looks for, as data: the words for each finding, and the cues that
negate a mention, make it uncertain, or end a cue's reach. Patterns are regular expressions over
ASCII-lowercased text; each must match in time linear in the text (no nested repeats).

Whose meaning each label has: NIH ChestX-ray14's, as its authors' own phrase list spells it
(`bak/patterns/cxr14_phrases.yml` in github.com/ncbi-nlp/NegBio, the NIH group's labeler): Infiltration is "infiltrate", not every opacity (that is CheXpert's Lung
Opacity, which the index does not have); a granuloma is not a Nodule; COPD and hyperinflation are
not Emphysema; volume loss is not Atelectasis; a blunted costophrenic angle is not an Effusion;
scarring is not Fibrosis; vascular congestion and heart failure are Edema. Where that list differs
from the clinical meaning we keep the clinical one: a calcified nodule is a Nodule (the list leaves
it out; the IU-Xray annotators index it as one), subcutaneous emphysema is not Emphysema, a
pericardial effusion is not an Effusion, cystic fibrosis is not Fibrosis."""

from __future__ import annotations

NO_FINDING = "No Finding"  # the index's spelling (cxr.archives.NO_FINDING)

_HEART = r"(?:heart|cardiac|cardiomediastinal|cardio-mediastinal|cardiopericardial)"
_HEART_PART = r"(?: (?:silhouette|silhouettes|shadow|size|contour|contours|outline)){0,2}"
# Words that may stand between the heart and "enlarged": "the heart is again mildly enlarged".
_LINK = (r"(?: (?:is|are|appears?|remains?|looks?|again|still|now|stably|stable|mildly|moderately|markedly|"
         r"severely|significantly|slightly|minimally|somewhat|borderline|likely|probably|possibly|xxxx|at|in|not|"
         r"questionably|unchanged|globally|diffusely|be|been|has|have|become|grossly|persistently)){0,4}")

# label -> patterns of a mention (any match is one mention of the label).
FINDINGS: dict[str, tuple[str, ...]] = {
    "Atelectasis": (
        r"\batelecta\w*",
        r"\b(?:lobar|lobe|lung|segmental|subsegmental) collapse",
        r"\bcollapsed? (?:of )?(?:the )?(?:\w+ ){0,2}(?:lobe|lung|segment)s?\b",
    ),
    "Cardiomegaly": (
        r"\bcardiomegaly\b",
        r"\bcardiac enlargement\b",
        rf"\b{_HEART}{_HEART_PART}{_LINK} (?:enlarged|enlargement|large|increased in size)\b",
        rf"\b(?:enlarged|enlargement of the|large) (?:\w+ )?{_HEART}\b",
        r"\bincrease(?:d| in) (?:\w+ )?(?:heart|cardiac) size\b",
        r"\bborderline (?:\w+ )?(?:heart size|cardiac size|cardiomegaly|enlarge\w*)",
        r"\bheart is borderline in size\b",
    ),
    "Consolidation": (r"\bconsolidat\w*",),
    "Edema": (
        r"(?<!soft tissue )(?<!subcutaneous )\bo?edema\b",
        r"\b(?:congestive )?heart failure\b",
        r"\bchf\b",
        r"\b(?:pulmonary |vascular |venous |pulmonary vascular |pulmonary venous )congestion\b",
        r"\bcongestive (?:changes?|failure)\b",
        # Vascular congestion in other words (IU indexes it as Pulmonary Congestion, which is Edema here).
        r"\bvascular prominence\b",
        r"\bprominen\w* of the (?:\w+ ){0,2}(?:vascularity|vasculature|vessels)\b",
        r"\b(?:pulmonary |central |lung )(?:\w+ )?(?:vascularity|vasculature|vessels) (?:is |are |appears? )?"
        r"(?:again |mildly |slightly |moderately )?(?:prominent|engorged|increased|accentuated|congested)\b",
        r"\b(?:prominent|increased|engorged) (?:\w+ ){0,2}(?:vascularity|vasculature|vascular markings)\b",
        r"\b(?:venous|vascular) (?:engorgement|hypertension)\b",
        r"\bcephalization\b",
    ),
    "Effusion": (
        r"(?<!pericardial )\beffusions?\b",
        r"\bpleural fluid\b",
        r"\bfluid (?:in|within) the (?:\w+ ){0,2}(?:pleural space|costophrenic)",
        r"\b(?:hydro|hemo|haemo)pneumothora\w*",
    ),
    "Emphysema": (r"(?<!subcutaneous )\bemphysem\w*",),
    "Fibrosis": (r"(?<!cystic )\bfibros[ie]s\b", r"\bfibrotic\b"),
    "Hernia": (r"\bhernia[ls]?\b", r"\bherniation\b"),
    "Infiltration": (r"\binfiltrat\w*",),
    "Mass": (r"\bmass(?:es)?\b", r"\bmass-?like\b"),
    "Nodule": (r"\bnodul\w*",),
    "Pleural_Thickening": (
        r"\bpleural(?: |-)(?:parenchymal )?thickening\b",
        r"\bpleuroparenchymal thickening\b",
        r"\bthickening of the (?:\w+ )?pleura\w*",
        r"\bthickened (?:\w+ )?pleura\b",
        # The fissures are pleura; an apical cap is pleural thickening at the apex.
        r"\bfissural thickening\b",
        r"\bthickening of the (?:\w+ )?fissures?\b",
        r"\b(?:pleural|apical) (?:capping|caps?)\b",
    ),
    "Pneumonia": (
        r"\b(?:broncho)?pneumonias?\b",
        r"\binfectious (?:process|etiology|infiltrate)",
        r"(?<!granulomatous )(?<!prior )(?<!old )(?<!previous )\b(?:pulmonary |lung |superimposed )?infection\b",
    ),
    "Pneumothorax": (r"\b(?:hydro|hemo|haemo)?pneumothora\w*", r"\bpleural air\b"),
}

# Phrases that deny labels without naming them: label -> negative when the report does not
# mention it otherwise ("clear lungs" says there is no consolidation; the positive labels stay as
# they are, only read() shows these).
IMPLIED_NEGATIVES: dict[str, tuple[str, ...]] = {
    r"\b(?:lungs? (?:are |is |appears? |remains? )?(?:otherwise )?(?:grossly )?clear|clear lungs?)\b":
        ("Consolidation", "Edema", "Infiltration", "Pneumonia"),
    rf"\bnormal (?:heart|cardiac) size\b|\b{_HEART}{_HEART_PART}(?: and \w+(?: \w+)?)? (?:is |are |appears? |remains? )?"
    r"(?:within normal limits|normal)\b": ("Cardiomegaly",),
}

# label -> words that, in the mention's sentence, say it is something else: a "nodular opacity"
# that is a nipple shadow or an artifact is not a Nodule.
EXPLAINED_AWAY: dict[str, str] = {
    "Nodule": r"\bnipple|\bartifact\w*",
}

# The cue words below are matched in the text between a clause's start and the mention ("before"),
# or from the mention's end on ("after", anchored there: "effusion has resolved").

# Negated, yet uncertain: these outrank negation ("pneumonia cannot be excluded").
UNCERTAIN_DESPITE_NEGATION_BEFORE = (
    r"\b(?:cannot|can not|can't|could not|not) (?:be )?(?:excluded?|ruled? out)\b",
    r"\bnot (?:entirely |completely )?(?:exclude|excluded|rule out)\b",
)
UNCERTAIN_DESPITE_NEGATION_AFTER = (
    r"^[^.]{0,40}?\b(?:cannot|can not|can't|could not|is not|are not|not) (?:be )?(?:entirely |completely )?"
    r"(?:excluded|ruled out)\b",
    r"^[^.]{0,40}?\bdifficult to (?:entirely |completely )?(?:exclude|rule out)\b",
)

NEGATION_BEFORE = (
    r"\bno\b", r"\bnot\b", r"\bwithout\b", r"\bnegative\b", r"\bfree of\b", r"\babsence of\b",
    r"\babsent\b", r"\bnor\b", r"\bneither\b", r"\bresolution of\b", r"\bresolved\b",
    r"\bclearing of\b", r"\bclear of\b", r"\bremoval of\b",
)
NEGATION_AFTER = (
    r"^[^.]{0,30}?\b(?:is|are|was|were|has been|have been)? ?(?:not|no longer) (?:\w+ )?(?:seen|identified|present|"
    r"visualized|visible|appreciated|demonstrated|evident|noted|detected|apparent|shown|definitely seen)\b",
    r"^[^.]{0,50}?\b(?:has|have|had)? ?(?:since |now |completely |nearly |largely )?(?:resolved|cleared)\b",
    r"^[^.]{0,20}?\b(?:is|are) (?:now )?(?:absent|gone)\b",
    r"^[^.]{0,20}?\bruled out\b",
    r"^[^.]{0,30}?\b(?:within (?:the )?(?:\w+ )?(?:normal limits|limits of normal)|(?:is|are|appears?) normal)\b",
)

# Pseudo-negations: a cue word that negates something else ("no change in the effusion").
NOT_A_NEGATION = (
    r"\bno (?:significant |interval |appreciable |substantial |definite |major )?"
    r"(?:change|increase|decrease|worsening|improvement|progression|growth|difference)\b",
    r"\bnot (?:only|changed|significantly changed|increased|decreased|improved|worsened)\b",
    r"\bwithout (?:significant |interval )?(?:change|increase|worsening)\b",
    r"\bno longer (?:enlarged|large)\b",
)

UNCERTAIN_BEFORE = (
    r"\bpossibl[ey]\b", r"\bmay\b", r"\bmight\b", r"\bcould\b", r"\bquestionabl[ey]\b",
    r"\bquestion\b", r"\bsuspicious\b", r"\bsuspect\w*", r"\bsuggest\w*", r"\bconcern\w*", r"\bworrisome\b",
    r"\bdifferential\b", r"\bconsider(?:ation)?\b", r"\bversus\b", r"\bvs\b", r"\bequivocal\b",
    r"\bindeterminate\b", r"\bpresumed\b", r"\bpresumably\b", r"\bvague\b", r"\bearly\b", r"\bdeveloping\b",
    r"\bincipient\b", r"\bcannot\b", r"\bif\b", r"\b(?:to )?rule out\b", r"\bevaluate for\b", r"\bsuspicion\b",
    r"\bpotential\b", r"\bperhaps\b", r"\balternatively\b", r"\bclinical setting\b",
    r"\bcorrelat\w* (?:clinically )?(?:for|with)\b", r"\bnot certain\b", r"\buncertain\b", r"\bmimic\w*",
)
UNCERTAIN_AFTER = (
    r"^[^.]{0,20}?\b(?:versus|vs)\b",
    r"^[^.]{0,30}?\b(?:is|are) (?:possible|questioned|suspected|not excluded|in the differential|"
    r"(?:another |a )?consideration|(?:also )?considered)\b",
    r"^[^.]{0,10}?\?",
)

# Words that end a cue's reach within a sentence ("no effusion, but mild cardiomegaly").
TERMINATORS = (
    r"\bbut\b", r"\bhowever\b", r"\balthough\b", r"\bthough\b", r"\bexcept\b", r"\bapart from\b",
    r"\baside from\b", r"\bwhich\b", r"\bwhereas\b", r"\bnevertheless\b", r"\byet\b", r"\bthere (?:is|are)\b",
    r"\bwith (?:a |an |the )?(?:\w+ )?(?:new|small|mild|minimal|trace|moderate|large|persistent|stable|unchanged)\b",
)

# Sentence ends: . ; ! and line breaks, but not a decimal point ("1.5 cm"). A "?" is a cue, not an end.
SENTENCE_END = r"(?<!\d)\.|\.(?!\d)|[;!\n\r]"

# The labeler reads at most this many characters of a report (the longest IU-Xray findings +
# impression is 1,417): a hostile 100 MB string costs what 20,000 characters cost.
MAX_CHARS = 20_000
