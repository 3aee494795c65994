"""The protobuf messages of Tinker's wire (`tinker_public.proto`, TINKER_WIRE.md §9), defined here
from the listing's field numbers rather than taken from the `tinker` package: the server must not
depend on the official client. tests/tinker/ checks this schema field by field against the
descriptor the `tinker` package ships.

Only numbers, types, labels and oneofs matter on the wire; names are kept as in the listing so the
two descriptors compare equal.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "tinker_public"
CONTENT_TYPE = "application/x-protobuf"

ENUMS: dict[str, list[tuple[str, int]]] = {
    "StopReason": [("STOP_REASON_STOP", 0), ("STOP_REASON_LENGTH", 1)],
    "DType": [
        ("DTYPE_UNSPECIFIED", 0),
        ("DTYPE_FLOAT32", 1),
        ("DTYPE_INT64", 2),
        ("DTYPE_INT32", 3),
        ("DTYPE_BFLOAT16", 4),
    ],
}

# (number, name, kind): kind is a type, optionally prefixed by `repeated`, `optional` (proto3
# presence) or `oneof <group>`, or `map<key, value>`
MESSAGES: dict[str, list[tuple[int, str, str]]] = {
    "SampleResponse": [
        (1, "sequences", "repeated SampledSequence"),
        (2, "prompt_logprobs", "optional bytes"),
        (3, "topk_prompt_logprobs", "optional TopkLogprobs"),
        (4, "prompt_cache_hit_tokens", "int32"),
        (5, "target_prompt_logprobs", "optional Tensor"),
        (6, "prompt_alt_tokens", "optional PromptAltTokens"),
    ],
    "PromptAltTokens": [(1, "tokens", "Tensor"), (2, "logprobs", "Tensor")],
    "SampledSequence": [
        (1, "stop_reason", "StopReason"),
        (2, "tokens", "bytes"),
        (3, "logprobs", "optional bytes"),
        (4, "topk_sampled_logprobs", "optional TopkLogprobs"),
    ],
    "TopkLogprobs": [(1, "token_ids", "bytes"), (2, "logprobs", "bytes"), (3, "k", "uint32"), (4, "length", "uint32")],
    "SparseCsr": [(1, "values", "bytes"), (2, "crow_indices", "bytes"), (3, "col_indices", "bytes")],
    "Tensor": [
        (1, "dense", "oneof encoding bytes"),
        (2, "sparse_csr", "oneof encoding SparseCsr"),
        (3, "dtype", "DType"),
        (4, "shape", "repeated int64"),
    ],
    "BatchedTensor": [
        (1, "data", "bytes"),
        (2, "offsets", "bytes"),
        (3, "dtype", "DType"),
        (4, "trailing_shape", "repeated int64"),
    ],
    "ArrayRecord": [
        (1, "type_tag", "string"),
        (2, "fields", "map<string, BatchedTensor>"),
        (3, "num_datums", "int64"),
    ],
    "ForwardBackwardOutput": [
        (1, "loss_fn_output_type", "string"),
        (2, "loss_fn_outputs", "repeated ArrayRecord"),
        (3, "metrics", "map<string, double>"),
    ],
    "ForwardBackwardRequest": [
        (1, "model_id", "string"),
        (2, "seq_id", "int32"),
        (3, "data", "repeated Datum"),
        (4, "loss_fn", "string"),
        (5, "loss_fn_config", "map<string, double>"),
        (6, "forward_only", "bool"),
        (7, "loss_fn_config_v2", "map<string, LossConfigValue>"),
    ],
    "LossConfigValue": [(1, "number", "oneof value double"), (2, "text", "oneof value string")],
    "Datum": [
        (1, "model_input", "repeated Chunk"),
        (2, "loss_fn_inputs", "map<string, Tensor>"),
        (3, "model_input_spans", "repeated ProvenanceSpan"),
        (4, "loss_fn_input_spans", "repeated ProvenanceSpan"),
    ],
    "ProvenanceSpan": [
        (1, "prompt_tokens", "oneof span PromptProvenanceSpan"),
        (2, "sampled_tokens", "oneof span SampledProvenanceSpan"),
    ],
    "PromptProvenanceSpan": [(1, "sequence_id", "string"), (2, "offset", "int64"), (3, "length", "int64")],
    "SampledProvenanceSpan": [(1, "sequence_id", "string"), (2, "offset", "int64"), (3, "length", "int64")],
    "Chunk": [
        (1, "encoded_text", "oneof chunk EncodedTextChunk"),
        (2, "image", "oneof chunk ImageChunk"),
        (3, "dmel", "oneof chunk DmelChunk"),
    ],
    "EncodedTextChunk": [(1, "tokens", "bytes")],
    "ImageChunk": [
        (1, "data", "bytes"),
        (2, "format", "string"),
        (3, "expected_tokens", "optional int32"),
        (4, "override_dimensions", "optional ImageDimensions"),
    ],
    "ImageDimensions": [(1, "width", "uint32"), (2, "height", "uint32")],
    "DmelChunk": [(1, "dmel", "bytes")],
    "SamplingParams": [
        (1, "max_tokens", "optional int32"),
        (2, "seed", "optional uint64"),
        (3, "temperature", "optional float"),
        (4, "top_k", "optional int32"),
        (5, "top_p", "optional float"),
        (6, "stop_strs", "oneof stop StopStrings"),
        (7, "stop_tokens", "oneof stop StopTokens"),
    ],
    "StopStrings": [(1, "values", "repeated string")],
    "StopTokens": [(1, "values", "repeated int32")],
}

_F = descriptor_pb2.FieldDescriptorProto
SCALARS = {
    "double": _F.TYPE_DOUBLE,
    "float": _F.TYPE_FLOAT,
    "int32": _F.TYPE_INT32,
    "int64": _F.TYPE_INT64,
    "uint32": _F.TYPE_UINT32,
    "uint64": _F.TYPE_UINT64,
    "bool": _F.TYPE_BOOL,
    "string": _F.TYPE_STRING,
    "bytes": _F.TYPE_BYTES,
}


def _set_type(field: descriptor_pb2.FieldDescriptorProto, type_name: str) -> None:
    if type_name in SCALARS:
        field.type = SCALARS[type_name]
    else:
        field.type = _F.TYPE_ENUM if type_name in ENUMS else _F.TYPE_MESSAGE
        field.type_name = f".{PACKAGE}.{type_name}"


def _map_entry(message: descriptor_pb2.DescriptorProto, name: str, key: str, value: str) -> str:
    """A map field is a repeated nested `<Name>Entry {key = 1; value = 2}` message, as protoc writes it."""
    entry = message.nested_type.add()
    entry.name = "".join(part.capitalize() for part in name.split("_")) + "Entry"
    entry.options.map_entry = True
    for number, (field_name, type_name) in enumerate((("key", key), ("value", value)), start=1):
        field = entry.field.add(name=field_name, number=number, label=_F.LABEL_OPTIONAL)
        _set_type(field, type_name)
    return f"{message.name}.{entry.name}"


def _message(name: str, fields: list[tuple[int, str, str]]) -> descriptor_pb2.DescriptorProto:
    message = descriptor_pb2.DescriptorProto(name=name)
    oneofs: list[str] = []
    synthetic: list[str] = []  # proto3 `optional` fields: each in its own oneof, after the real ones
    for number, field_name, kind in fields:
        field = message.field.add(name=field_name, number=number, label=_F.LABEL_OPTIONAL)
        words = kind.split()
        if kind.startswith("map<"):
            key, value = (part.strip() for part in kind[4:-1].split(","))
            field.label = _F.LABEL_REPEATED
            _set_type(field, _map_entry(message, field_name, key, value))
        elif words[0] == "repeated":
            field.label = _F.LABEL_REPEATED
            _set_type(field, words[1])
        elif words[0] == "optional":
            field.proto3_optional = True
            synthetic.append(field_name)
            _set_type(field, words[1])
        elif words[0] == "oneof":
            if words[1] not in oneofs:
                oneofs.append(words[1])
            field.oneof_index = oneofs.index(words[1])
            _set_type(field, words[2])
        else:
            _set_type(field, words[0])
    for field in message.field:
        if field.proto3_optional:
            field.oneof_index = len(oneofs) + synthetic.index(field.name)
    for group in oneofs + [f"_{name}" for name in synthetic]:
        message.oneof_decl.add(name=group)
    return message


def file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(name="tinker_public.proto", package=PACKAGE, syntax="proto3")
    for name, fields in MESSAGES.items():
        file.message_type.append(_message(name, fields))
    for name, values in ENUMS.items():
        enum = file.enum_type.add(name=name)
        for value_name, number in values:
            enum.value.add(name=value_name, number=number)
    return file


_POOL = descriptor_pool.DescriptorPool()  # a private pool: nothing else in the process can clash with it
_POOL.AddSerializedFile(file_descriptor().SerializeToString())


def message_class(name: str) -> Any:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


ForwardBackwardRequest = message_class("ForwardBackwardRequest")
ForwardBackwardOutput = message_class("ForwardBackwardOutput")
SampleResponse = message_class("SampleResponse")
DTYPE = {name: number for name, number in ENUMS["DType"]}
STOP_REASON = {"stop": 0, "length": 1}
