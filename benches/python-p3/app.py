"""A WASI 0.3 wasi:http/service in Python (componentize-py's p3 world)."""
import componentize_py_async_support
import wit_world
from wit_world import exports
from wit_world.imports.wasi_http_types import Fields, Request, Response
from componentize_py_types import Ok


class Handler(exports.Handler):
    async def handle(self, request: Request) -> Response:
        path = request.get_path_with_query() or "/"
        if path.startswith("/spin"):
            while True:
                pass
        if path.startswith("/bomb"):
            kept = []
            while True:
                kept.append(bytearray(1 << 20))
        body = f"Hello from Python over WASI 0.3! ({path})\n".encode()
        tx, rx = wit_world.byte_stream()
        trailers_tx, trailers_rx = wit_world.result_option_wasi_http_types_fields_wasi_http_types_error_code_future(lambda: Ok(None))
        response, _sent = Response.new(Fields.from_list([("content-type", b"text/plain")]), rx, trailers_rx)

        async def write_body():
            with tx:
                await tx.write_all(body)
            await trailers_tx.write(Ok(None))

        componentize_py_async_support.spawn(write_body())
        return response
