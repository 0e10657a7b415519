"""What a task is: :class:`TaskSpec` (which columns make the input, target or label) and
:class:`HubSource` (where its public copy lives on the hub and how that copy's columns map)."""

from __future__ import annotations

from dataclasses import dataclass

from prefixtune.data.fields import template_fields

KINDS = ("generation", "classification")


@dataclass(frozen=True)
class HubSource:
    """A task's public copy on the Hugging Face hub.

    Fields:
        name: ``owner/name[:config][@revision]`` (see :mod:`prefixtune.data.hub`).
        columns: ``(task column, hub field path)`` pairs where the hub's names differ from the
            task's, e.g. ``(("mr", "meaning_representation"),)``. Applied to any source whose rows
            have the hub's fields and lack the task's (the hub itself, a ``save_to_disk`` copy).
        labels: classification: the task's names for the hub's integer label ids ``0..n-1``
            (``("entailment", "not_entailment")``). An integer label from any source is read as
            such an id; -1 (GLUE's mark of a hidden test label) is refused as unlabelled.
    """

    name: str
    columns: tuple[tuple[str, str], ...] = ()
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskSpec:
    """How records become examples.

    Column names may be dotted paths into nested fields (:mod:`prefixtune.data.fields`).

    Fields:
        name: task name (for run directories, reports, and the local copy ``<data root>/<name>/``).
        kind: ``"generation"`` or ``"classification"``.
        template: the input text, formatted with the record's columns, e.g. ``"{mr}\\n"``.
        target_column: generation: the column holding the target text, or a list of texts (the
            first is the training target, all are references of the input).
        references_column: generation: a column holding the list of all references of the row's
            input (e.g. a multi-reference test set with one row per input); None: the targets of
            the rows that share an input are its references.
        label_column: classification: the column holding the label.
        labels: classification: label values in id order (empty: sorted values seen in training data).
        text_columns: classification: one column, or two for sentence pairs (used instead of the
            template when given, so the tokenizer can mark the pair).
        hub: the public copy used when no local copy exists (a plain string is a hub name with no
            column mapping).
    """

    name: str
    kind: str
    template: str = "{text}"
    target_column: str | None = None
    label_column: str | None = None
    labels: tuple[str, ...] = ()
    text_columns: tuple[str, ...] = ()
    hub: HubSource | None = None
    references_column: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.hub, str):
            object.__setattr__(self, "hub", HubSource(self.hub))

    @property
    def columns(self) -> list[str]:
        """The columns a local copy of this task needs (for messages)."""
        if self.kind == "classification":
            inputs = list(self.text_columns) or _safe_fields(self.template)
            return inputs + [c for c in (self.label_column,) if c]
        return _safe_fields(self.template) + [c for c in (self.target_column, self.references_column) if c]


def _safe_fields(template: str) -> list[str]:
    try:
        return template_fields(template)
    except ValueError:  # a malformed template is reported when it is used
        return []
