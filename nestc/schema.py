"""The JSON Schema of YAML specs (`nestc schema`), generated from the same property registry the
resolver uses, so the schema and the language cannot drift apart."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from .props import BOX_KINDS, BOX_PROPS, MODEL_PROPS, OPTIMIZER_GROUPS, TRAIN_PROPS

Scalar = Union[bool, int, float, str]
Doc = Union[str, list[str]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DocumentedValue(_Strict):
    """A value with documentation: `{value: ..., doc: ..., note: ...}`."""

    value: Scalar = Field(description="a nestc expression (or a number / true / false)")
    doc: Optional[Doc] = Field(None, description="comment lines shown above it in .nest")
    note: Optional[str] = Field(None, description="a comment at the end of its line in .nest")


Value = Union[Scalar, DocumentedValue]
_doc_fields: dict[str, Any] = {
    "doc": (Optional[Doc], Field(None, description="documentation: comment lines above it")),
    "note": (Optional[str], Field(None, description="a comment at the end of its first line")),
}


def _prop_fields(table, skip=()) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, info in table.items():
        if name in skip:
            continue
        fields[name] = (Optional[Value], Field(None, description=f"{info.doc}. Example: {info.example}"))
    return fields


Box = create_model(
    "Box", __base__=_Strict,
    box=(Union[str, list[str]], Field(description="the box's name, or several names sharing these properties")),
    kind=(Literal[tuple(BOX_KINDS)], Field(description="; ".join(f"{k}: {v}" for k, v in BOX_KINDS.items()))),
    like=(Optional[str], Field(None, description="copy the properties of another box")),
    when=(Optional[Scalar], Field(None, description="declare the box only when this is true")),
    context=(Optional[dict[str, Value]], Field(None, description=BOX_PROPS["context"].doc)),
    tail_doc=(Optional[Doc], None),
    **_doc_fields, **_prop_fields(BOX_PROPS, skip=("context",)),
)

Let = create_model("Let", __base__=_Strict, let=(str, Field(description="the new stream's name")),
                   value=(Scalar, Field(description="its expression")),
                   when=(Optional[Scalar], None), **_doc_fields)
Set = create_model("Set", __base__=_Strict,
                   set=(Literal["x"], Field(description="the residual stream")),
                   value=(Scalar, Field(description="its new value")), **_doc_fields)
Block = create_model("Block", __base__=_Strict, block=(str, ...),
                     body=(list[Union[Let, Set, Box]], Field(default_factory=list)),
                     tail_doc=(Optional[Doc], None), **_doc_fields)
Repeat = create_model("Repeat", __base__=_Strict, repeat=(Scalar, ...), blocks=(list[str], ...),
                      **_doc_fields)
Model = create_model("Model", __base__=_Strict, layers=(Optional[list[Repeat]], None),
                     tail_doc=(Optional[Doc], None), **_doc_fields, **_prop_fields(MODEL_PROPS))
Optimizer = create_model("Optimizer", __base__=_Strict,
                         name=(str, Field(description="an optimizer spec: sgd, momentum, adam, adamw, muon, m3, ...")),
                         args=(Optional[dict[str, Scalar]], Field(None, description="its params")),
                         on=(Optional[Literal[tuple(OPTIMIZER_GROUPS)]], None), **_doc_fields)
Train = create_model("Train", __base__=_Strict, optimizers=(Optional[list[Optimizer]], None),
                     tail_doc=(Optional[Doc], None), **_doc_fields, **_prop_fields(TRAIN_PROPS))
UseEntry = create_model("UseEntry", __base__=_Strict, path=(Optional[str], None),
                        name=(Optional[str], None), **_doc_fields)

Spec = create_model(
    "NestcSpec", __base__=_Strict,
    spec=(str, Field(description="the spec's name")),
    title=(Optional[str], None),
    use=(Optional[list[Union[str, UseEntry]]], Field(None, description="specs whose declarations this one builds on")),
    params=(Optional[dict[str, Value]], Field(None, description="compile-time parameters; override with --set")),
    boxes=(Optional[list[Box]], None),
    blocks=(Optional[list[Block]], None),
    model=(Optional[Model], None),
    train=(Optional[Train], None),
    tail_doc=(Optional[Doc], None),
    **_doc_fields,
)


def json_schema() -> dict[str, Any]:
    schema = Spec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "nestc spec (YAML)"
    schema["description"] = ("A nested optimization system for the nestc compiler. Expressions are "
                             "strings in the .nest expression syntax.")
    return schema


def validate(obj: Any) -> None:
    """Raise pydantic.ValidationError when `obj` (a loaded YAML spec) does not fit the schema."""
    Spec.model_validate(obj)
