"""Prints the serialized FileDescriptorProto of the `tinker` package's tinker_public.proto (hex)."""

from google.protobuf import descriptor_pb2
from tinker.proto import tinker_public_pb2

proto = descriptor_pb2.FileDescriptorProto()
tinker_public_pb2.DESCRIPTOR.CopyToProto(proto)
print("RESULT " + '"' + proto.SerializeToString().hex() + '"')
