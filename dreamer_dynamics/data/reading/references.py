"""The evaluation references a dataset's description names (docs/data.md, "Evaluation references").

A dataset that knows more of its truth than the stored latents (the built-in worlds: object positions and an
oracle of the true future) names, in its metadata attributes, the import path of a function
``dataset -> EvaluationReferences``, as it names its codec class. Reading resolves the name only for a dataset
that gives one, so training on a dataset of one's own imports nothing else.
"""

from __future__ import annotations

from dreamer_dynamics.references import EvaluationReferences

from .codec import import_class
from .dataset import LatentDataset
from .format import DatasetError

REFERENCES_ATTRIBUTE = "evaluation_references"  # metadata attribute: "package.module.function"


def dataset_references(dataset: LatentDataset) -> EvaluationReferences:
    """The references the dataset's metadata names (``REFERENCES_ATTRIBUTE``), built from the dataset; none
    (both None) where it names none."""
    path = dataset.meta.attributes.get(REFERENCES_ATTRIBUTE)
    if not path:
        return EvaluationReferences()
    references = import_class(path, dataset.root, f"{REFERENCES_ATTRIBUTE} function")(dataset)
    if not isinstance(references, EvaluationReferences):
        raise DatasetError(
            dataset.root, f"{path} returned {type(references).__name__}, not EvaluationReferences"
        )
    return references


__all__ = ["REFERENCES_ATTRIBUTE", "dataset_references"]
