"""The preprocessor lists this course gives nbgrader, as import strings (imports nothing).

``course/nbgrader_config.py`` assigns them; nbgrader imports the classes when it runs a
command.  Keeping them here, not in :mod:`autograder.nbgrader_bridge` (which subclasses
nbgrader's preprocessors), lets ``python -m autograder`` read the course's config — for the
course id and the gradebook URL — without importing nbgrader's preprocessors, nbconvert and
nbclient (about 1.5 s).

>>> SANITIZE_PREPROCESSORS[3], AUTOGRADE_PREPROCESSORS[0]
('autograder.nbgrader_bridge.RestoreMetadata', 'autograder.nbgrader_bridge.SafeGrade')
"""

from __future__ import annotations

__all__ = ["AUTOGRADE_PREPROCESSORS", "FEEDBACK_PREPROCESSORS", "SANITIZE_PREPROCESSORS"]

_BRIDGE = "autograder.nbgrader_bridge."
#: ``c.Autograde.sanitize_preprocessors`` for this course.
SANITIZE_PREPROCESSORS = [
    "nbgrader.preprocessors.ClearOutput",
    "nbgrader.preprocessors.DeduplicateIds",
    "nbgrader.preprocessors.OverwriteKernelspec",
    _BRIDGE + "RestoreMetadata",
    "nbgrader.preprocessors.OverwriteCells",
    _BRIDGE + "NeutralizeMarkdown",
    "nbgrader.preprocessors.CheckCellMetadata",
]
#: ``c.Autograde.autograde_preprocessors``: nbgrader's list with ``Execute`` replaced.
AUTOGRADE_PREPROCESSORS = [
    _BRIDGE + "SafeGrade",
    "nbgrader.preprocessors.IgnorePattern",
    "nbconvert.preprocessors.ClearMetadataPreprocessor",
    "nbgrader.preprocessors.LimitOutput",
    "nbgrader.preprocessors.SaveAutoGrades",
    _BRIDGE + "SaveComments",
    "nbgrader.preprocessors.AssignLatePenalties",
    "nbgrader.preprocessors.CheckCellMetadata",
]
#: ``c.GenerateFeedback.preprocessors``: hidden tests never shown (``HideTestTracebacks``).
FEEDBACK_PREPROCESSORS = [
    "nbgrader.preprocessors.ClearHiddenTests",
    _BRIDGE + "HideTestTracebacks",
    "nbgrader.preprocessors.GetGrades",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
]
