"""The TLS of the tests' Python HTTPS servers (tests/authzen/pdp.py --mtls, tests/exchange/sts.py):
tests/fixtures/tls/server.pem, and a client certificate required, signed by the fixtures' ca.pem
(the TLS handshake refuses any other)."""
import os
import ssl

TLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "tls")


def require_client_certificates(server):
    """Wraps `server`'s listening socket in TLS that asks every client for its certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(TLS, "server.pem"), os.path.join(TLS, "server-key.pem"))
    ctx.load_verify_locations(os.path.join(TLS, "ca.pem"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
