"""The wire protocol that server and client share: the KServe V2 .proto files and their generated
stubs (`messages_pb2`, `service_pb2_grpc`; `make proto` regenerates them), the V2 REST facts and
path grammar (`v2`), and each transport's status codes for shipyard's errors (`status`). It
imports nothing of `shipyard.serve`, so `shipyard.client` stays light."""
