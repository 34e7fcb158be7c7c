"""An ML Metadata gRPC server for tests, without the metadata_store_server binary.

The ml-metadata wheel ships no server, but its extension module exposes the
``MetadataStoreService`` methods by name (serialized request in, serialized response,
error message and status code out) over a store made by ``CreateMetadataStore``. A
generic gRPC handler forwards the bytes, so TFX's ``MetadataStoreClientConfig`` (what a
Kubeflow pod uses) talks to a real store backed by SQLite. One worker thread: SQLite.
"""

from concurrent import futures

import grpc
from ml_metadata.metadata_store.pywrap.metadata_store_extension import metadata_store as ext
from ml_metadata.proto import metadata_store_pb2, metadata_store_service_pb2

SERVICE = "ml_metadata.MetadataStoreService"
_STATUS = {code.value[0]: code for code in grpc.StatusCode}


class MetadataGrpcServer:
    """Serves a SQLite-backed store on 127.0.0.1 at a free port (``.port``)."""

    def __init__(self, sqlite_path: str):
        config = metadata_store_pb2.ConnectionConfig()
        config.sqlite.filename_uri = sqlite_path
        config.sqlite.connection_mode = (
            metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
        )
        migration = metadata_store_pb2.MigrationOptions(enable_upgrade_migration=True)
        self._store = ext.CreateMetadataStore(
            config.SerializeToString(), migration.SerializeToString()
        )
        service = metadata_store_service_pb2.DESCRIPTOR.services_by_name["MetadataStoreService"]
        self.methods = sorted(m.name for m in service.methods if hasattr(ext, m.name))
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(self._forward(getattr(ext, name)))
            for name in self.methods
        }
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    def _forward(self, method):
        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            response, error, code = method(self._store, request)
            if code:
                context.abort(_STATUS.get(code, grpc.StatusCode.UNKNOWN), error.decode())
            return response

        return handle

    def stop(self) -> None:
        self._server.stop(grace=None)
