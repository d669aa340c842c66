"""A worker process for the tests: claims one task of an agent type, writes it to a file, then
holds it (heartbeating) until it is killed.

    python hold_worker.py URL TOKEN AGENT_TYPE OUT_FILE
"""

import asyncio
import json
import sys
from typing import Any, Dict

from cairn import AsyncClient, Worker


async def main() -> None:
    url, token, agent_type, out = sys.argv[1:5]

    async def executor(task: Dict[str, Any]) -> Any:
        with open(out + ".tmp", "w") as f:
            json.dump(task, f)
        import os

        os.replace(out + ".tmp", out)
        await asyncio.Event().wait()  # held until the process is killed

    async with AsyncClient(url, token) as client:
        await Worker(client, [agent_type], executor, worker_id="doomed-worker").run(max_tasks=1)


if __name__ == "__main__":
    asyncio.run(main())
