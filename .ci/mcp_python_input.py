"""Sagas waiting for input, answered through the official MCP Python SDK (PyPI `mcp`).

The SDK (2.3.0) speaks 2026-07-28 by default (server/discover, multi-round-trip
`InputRequiredResult`) and the 2025-11-25 handshake in `mode="legacy"`. It has no built-in
tasks client, so the tasks path is driven through its extension API (`ClientExtension` claiming
`resultType: "task"`) and raw `tasks/get` / `tasks/update` requests on its session.

Each path starts `synthetic_chain` with `wait_at: 1` (step 1 waits for event `go`) as an
operator and checks the saga completes once the SDK answered:
  1. 2026-07-28, MRTR: the SDK's call_tool driver answers the elicitation and repeats the call;
  2. 2025-11-25 with the elicitation capability: `elicitation/create` during the call;
  3. 2025-11-25 without it: the result says `waiting` with `waiting_for`; `provide_input` answers;
  4. tasks: `input_required` with `inputRequests`, answered by `tasks/update`.
"""

import asyncio
import os
import sys
import uuid
from typing import Any, ClassVar

import httpx2
import mcp_types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from pydantic import TypeAdapter

RAW = TypeAdapter(dict[str, Any])
URL = os.environ["MCP_URL"]
TOKEN = os.environ["OPERATOR_TOKEN"]
failures: list[str] = []
passes: list[str] = []


def check(name: str, ok: bool, detail: Any = "") -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}{'' if ok else f': {detail}'}")
    (passes if ok else failures).append(name)


def transport():
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    return streamable_http_client(URL, http_client=http)


def chain_args(key: str) -> dict[str, Any]:
    return {"steps": 2, "wait_at": 1, "idempotency_key": f"{key}-{uuid.uuid4()}"}


asked: list[str] = []


async def accept(context, params) -> mcp_types.ElicitResult:
    asked.append(getattr(params, "mode", None) or "form")
    return mcp_types.ElicitResult(action="accept", content={})


async def mrtr() -> None:
    asked.clear()
    async with Client(transport(), elicitation_callback=accept) as client:
        check("mrtr: negotiated 2026-07-28", client.protocol_version == "2026-07-28", client.protocol_version)
        result = await client.call_tool("synthetic_chain", chain_args("py-mrtr"))
        status = (result.structured_content or {}).get("status")
        check("mrtr: the SDK answered the input request and the saga completed", status == "completed", result)
        check("mrtr: exactly one elicitation was answered", len(asked) == 1, asked)


async def elicitation() -> None:
    asked.clear()
    async with Client(transport(), mode="legacy", elicitation_callback=accept) as client:
        check("elicitation: negotiated a handshake version", client.protocol_version != "2026-07-28", client.protocol_version)
        result = await client.call_tool("synthetic_chain", chain_args("py-elicit"))
        status = (result.structured_content or {}).get("status")
        check("elicitation: elicitation/create answered during the call, saga completed", status == "completed", result)
        check("elicitation: exactly one elicitation", len(asked) == 1, asked)


async def provide_input() -> None:
    async with Client(transport(), mode="legacy") as client:
        result = await client.call_tool("synthetic_chain", chain_args("py-plain"))
        s = result.structured_content or {}
        check("provide_input: the result says waiting", s.get("status") == "waiting", s)
        waiting = s.get("waiting_for") or {}
        check("provide_input: waiting_for names the event", waiting.get("event") == "go", waiting)
        check("provide_input: the text tells how to answer", "provide_input" in str(result.content), result.content)
        saga = s.get("saga_id")
        status = await client.call_tool("get_saga_status", {"saga_id": saga})
        check("provide_input: get_saga_status shows the same waiting_for",
              (status.structured_content or {}).get("waiting_for") == waiting, status)
        bad = await client.call_tool("provide_input", {"saga_id": saga, "event": "nope", "data": {}, "idempotency_key": "k"})
        check("provide_input: a wrong event is a tool error", bad.is_error, bad)
        done = await client.call_tool("provide_input", {"saga_id": saga, "event": "go", "data": {}, "idempotency_key": "k"})
        d = done.structured_content or {}
        check("provide_input: delivered, saga completed", d.get("status") == "completed", d)
        again = await client.call_tool("provide_input", {"saga_id": saga, "event": "go", "data": {}, "idempotency_key": "k"})
        check("provide_input: the same answer again is a duplicate",
              (again.structured_content or {}).get("input", {}).get("duplicate") is True, again)


TASKS = "io.modelcontextprotocol/tasks"


class GetTask(mcp_types.Request[dict[str, Any], str]):
    method: str = "tasks/get"
    # 2026-07-28 requests name their target in an Mcp-Name header (SEP-2243).
    name_param: ClassVar[str | None] = "taskId"


class UpdateTask(mcp_types.Request[dict[str, Any], str]):
    method: str = "tasks/update"
    name_param: ClassVar[str | None] = "taskId"


async def tasks() -> None:
    from mcp.client.extension import ClientExtension, ResultClaim
    from typing import Literal

    class TaskHandle(mcp_types.Result):
        result_type: Literal["task"] = "task"
        task_id: str
        status: str

    seen: dict[str, Any] = {}

    async def resolve(handle: TaskHandle, ctx) -> mcp_types.CallToolResult:
        seen["created"] = handle.status
        session = ctx.session
        for _ in range(300):
            task = await session.send_request(GetTask(params={"taskId": handle.task_id}), RAW)
            status = task.get("status")
            if status == "input_required":
                seen["input_required"] = task
                answers = {key: {"action": "accept", "content": {}} for key in task.get("inputRequests", {})}
                await session.send_request(UpdateTask(params={"taskId": handle.task_id, "inputResponses": answers}), RAW)
                seen["updated"] = True
            elif status in ("completed", "failed", "cancelled"):
                return mcp_types.CallToolResult.model_validate(task.get("result") or {"content": []})
            await asyncio.sleep(0.1)
        raise TimeoutError("the task never ended")

    class Tasks(ClientExtension):
        identifier = TASKS

        def claims(self):
            return [ResultClaim(result_type="task", model=TaskHandle, resolve=resolve)]

    async with Client(transport(), extensions=[Tasks()]) as client:
        result = await client.call_tool("synthetic_chain", chain_args("py-tasks"))
        check("tasks: the call became a task", "created" in seen, seen)
        requests = (seen.get("input_required") or {}).get("inputRequests") or {}
        check("tasks: tasks/get said input_required with one inputRequest", len(requests) == 1, seen)
        first = next(iter(requests.values()), {})
        check("tasks: the input request is an elicitation", first.get("method") == "elicitation/create", first)
        check("tasks: tasks/update answered it", seen.get("updated") is True, seen)
        status = (result.structured_content or {}).get("status")
        check("tasks: the saga completed", status == "completed", result)


async def main() -> None:
    for name, path in [("mrtr", mrtr), ("elicitation", elicitation), ("provide_input", provide_input), ("tasks", tasks)]:
        try:
            await path()
        except Exception as e:  # a path that raises is a failure, reported with its cause
            check(f"{name}: ran", False, repr(e))
    print(f"mcp-python: {len(passes)} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)


asyncio.run(main())
