"""A remote MCP client with an OAuth access token, through the official MCP Python SDK.

This script plays the authorization server (an EC P-256 key made here, RFC 8414 metadata and a
JWKS served on a loopback port, an ES256 access token for this resource signed with PyJWT, which
the SDK itself depends on), starts `stepwise serve` configured for it (BIN, DATABASE_URL from
the environment), and checks what docs/mcp.md ("OAuth") says:
  1. a client without a token gets 401 with `WWW-Authenticate: Bearer resource_metadata=...`,
     follows it to the RFC 9728 document, and from there to the authorization server's metadata;
  2. the SDK, sending the access token, lists tools and runs a booking (search_rooms,
     create_booking) to completion.
"""

import asyncio
import base64
import datetime
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

failures: list[str] = []
passes: list[str] = []


def check(name: str, ok: bool, detail="") -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}{'' if ok else f': {detail}'}")
    (passes if ok else failures).append(name)


def b64(n: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()


KEY = ec.generate_private_key(ec.SECP256R1())
NUMBERS = KEY.public_key().public_numbers()
JWK = {"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": "py-1",
       "x": b64(NUMBERS.x), "y": b64(NUMBERS.y)}


class Issuer(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        base = self.server.base
        documents = {
            "/.well-known/oauth-authorization-server": {
                "issuer": base, "jwks_uri": f"{base}/jwks",
                "authorization_endpoint": f"{base}/authorize", "token_endpoint": f"{base}/token",
                "code_challenge_methods_supported": ["S256"]},
            "/jwks": {"keys": [JWK]},
        }
        document = documents.get(self.path)
        body = json.dumps(document or {"error": "not_found"}).encode()
        self.send_response(200 if document else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


issuer = ThreadingHTTPServer(("127.0.0.1", 0), Issuer)
issuer.base = f"http://127.0.0.1:{issuer.server_address[1]}"
threading.Thread(target=issuer.serve_forever, daemon=True).start()

port = free_port()
RESOURCE = f"http://127.0.0.1:{port}/mcp"
env = dict(os.environ, STEPWISE_OAUTH_ISSUER=issuer.base, STEPWISE_OAUTH_AUDIENCE=RESOURCE,
           STEPWISE_OAUTH_SUBJECT_CLAIM="email", RUST_LOG="warn")
server = subprocess.Popen([os.environ["BIN"], "serve", "--addr", f"127.0.0.1:{port}"], env=env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
for line in server.stderr:
    if line.startswith("stepwise serve: listening on"):
        break
else:
    sys.exit("mcp-python-oauth: stepwise serve exited before listening")
threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()


def token(email: str, scope: str) -> str:
    now = int(time.time())
    claims = {"iss": issuer.base, "aud": RESOURCE, "sub": str(uuid.uuid4()), "email": email,
              "scope": scope, "iat": now, "nbf": now, "exp": now + 600}
    return jwt.encode(claims, KEY, algorithm="ES256", headers={"kid": "py-1"})


async def discovery() -> None:
    async with httpx2.AsyncClient(timeout=30) as http:
        r = await http.post(RESOURCE, json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                            headers={"Accept": "application/json, text/event-stream"})
        challenge = r.headers.get("www-authenticate", "")
        check("discovery: 401 without a token", r.status_code == 401, r.status_code)
        found = re.search(r'resource_metadata="([^"]+)"', challenge)
        check("discovery: the challenge names the resource metadata", found is not None, challenge)
        metadata = (await http.get(found.group(1))).json()
        check("discovery: the metadata names this resource", metadata.get("resource") == RESOURCE, metadata)
        servers = metadata.get("authorization_servers") or []
        check("discovery: and its authorization server", servers == [issuer.base], metadata)
        check("discovery: and the scopes", "stepwise:staff" in metadata.get("scopes_supported", []), metadata)
        auth = (await http.get(f"{servers[0]}/.well-known/oauth-authorization-server")).json()
        check("discovery: the authorization server's metadata has its endpoints",
              auth.get("token_endpoint", "").startswith(issuer.base), auth)


async def booking() -> None:
    headers = {"Authorization": f"Bearer {token('desk@dewy.example', 'openid stepwise:staff')}"}
    http = httpx2.AsyncClient(headers=headers, timeout=60)
    async with Client(streamable_http_client(RESOURCE, http_client=http)) as client:
        tools = [t.name for t in (await client.list_tools()).tools]
        check("booking: tools listed for staff", "create_booking" in tools and "retry_saga" not in tools, tools)
        today = datetime.date.today()
        dates = {"check_in_date": str(today + datetime.timedelta(days=30)),
                 "check_out_date": str(today + datetime.timedelta(days=32))}
        rooms = await client.call_tool("search_rooms", {"status": "Vacant", **dates})
        found = (rooms.structured_content or {}).get("rooms") or []
        check("booking: search_rooms found a room", len(found) > 0, rooms)
        booked = await client.call_tool("create_booking", {
            "idempotency_key": f"py-oauth-{uuid.uuid4()}", "guest_email": "py.oauth@example.com",
            "guest_first_name": "Py", "guest_last_name": "Oauth", "room_number": found[0]["room_number"],
            "number_of_guests": 1, **dates})
        s = booked.structured_content or {}
        check("booking: the booking saga completed", s.get("status") == "completed", booked)
        check("booking: it has a booking number", bool((s.get("output") or {}).get("booking_number")), s)


async def main() -> None:
    try:
        for name, path in [("discovery", discovery), ("booking", booking)]:
            try:
                await path()
            except Exception as e:  # a path that raises is a failure, reported with its cause
                check(f"{name}: ran", False, repr(e))
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"mcp-python-oauth: {len(passes)} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)


asyncio.run(main())
