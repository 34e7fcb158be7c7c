"""tf.train.Example message classes built from its schema, without importing TensorFlow.

Beam workers only encode examples; importing TensorFlow for ``tf.train.Example`` costs each
worker process seconds of start-up and about half a GiB of memory. The protobuf runtime
builds the same messages from the field numbers of TensorFlow's ``example.proto`` and
``feature.proto``; the wire format is identical (checked against ``tf.train.Example`` in
tests/test_example_proto.py).
"""

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_FIELD = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "histopath.wire"


def _field(name: str, number: int, kind: int, label: int = _FIELD.LABEL_OPTIONAL, **kw):
    return _FIELD(name=name, number=number, type=kind, label=label, **kw)


def _file() -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FileDescriptorProto(
        name="histopath/wire/example.proto", package=_PACKAGE, syntax="proto3"
    )
    repeated = _FIELD.LABEL_REPEATED
    f.message_type.add(name="BytesList").field.append(
        _field("value", 1, _FIELD.TYPE_BYTES, repeated)
    )
    f.message_type.add(name="FloatList").field.append(
        _field("value", 1, _FIELD.TYPE_FLOAT, repeated)
    )
    f.message_type.add(name="Int64List").field.append(
        _field("value", 1, _FIELD.TYPE_INT64, repeated)
    )
    feature = f.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for name, number, list_type in (
        ("bytes_list", 1, "BytesList"),
        ("float_list", 2, "FloatList"),
        ("int64_list", 3, "Int64List"),
    ):
        type_name = f".{_PACKAGE}.{list_type}"
        feature.field.append(
            _field(name, number, _FIELD.TYPE_MESSAGE, type_name=type_name, oneof_index=0)
        )
    features = f.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.append(_field("key", 1, _FIELD.TYPE_STRING))
    entry.field.append(_field("value", 2, _FIELD.TYPE_MESSAGE, type_name=f".{_PACKAGE}.Feature"))
    features.field.append(
        _field(
            "feature",
            1,
            _FIELD.TYPE_MESSAGE,
            repeated,
            type_name=f".{_PACKAGE}.Features.FeatureEntry",
        )
    )
    f.message_type.add(name="Example").field.append(
        _field("features", 1, _FIELD.TYPE_MESSAGE, type_name=f".{_PACKAGE}.Features")
    )
    return f


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())
Example = message_factory.MessageFactory(_POOL).GetPrototype(
    _POOL.FindMessageTypeByName(f"{_PACKAGE}.Example")
)
