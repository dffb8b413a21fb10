"""A toy authorization service for the custom-auth example: 200 (with x-auth-user)
for `Authorization: Bearer let-me-in`, 401 otherwise. Listens on 127.0.0.1:9090."""

from http.server import BaseHTTPRequestHandler, HTTPServer


class Check(BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.headers.get("authorization") == "Bearer let-me-in"
        body = b"" if ok else b"invalid or missing token\n"
        self.send_response(200 if ok else 401)
        if ok:
            self.send_header("x-auth-user", "demo")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


HTTPServer(("127.0.0.1", 9090), Check).serve_forever()
