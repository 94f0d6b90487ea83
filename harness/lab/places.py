"""A farm's places, as a boot uses one: acquired before labgrid builds the target (a RemotePlace needs it),
released when the boot is over, with labgrid's own client. A place someone else holds is waited for, up
to a deadline; then, like a coordinator that does not answer, it is the lab's problem, never the build's.
"""

from __future__ import annotations

import logging
import subprocess
import time

from ..errors import InfrastructureError
from .farm import labgrid_tool

log = logging.getLogger(__name__)

RETRY_S = 2.0
CLIENT_DEADLINE_S = 60.0
HELD = ("already acquired",)  # labgrid-client's words for a place another client (or session) holds


def remote_place(resources: dict | list | None) -> str | None:
    """The name of the RemotePlace among a labgrid target's resources (mapping or list form), if any."""
    items = resources.items() if isinstance(resources, dict) else (kv for r in resources or () for kv in r.items())
    return next(((args or {}).get("name") for cls, args in items if cls == "RemotePlace"), None)


def client(coordinator: str | None, *args: str) -> subprocess.CompletedProcess:
    cmd = [labgrid_tool("labgrid-client"), *(("--coordinator", coordinator) if coordinator else ()), *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=CLIENT_DEADLINE_S)
    except subprocess.TimeoutExpired:
        where = coordinator or "$LG_COORDINATOR"
        raise InfrastructureError(f"labgrid's coordinator ({where}) did not answer `labgrid-client {' '.join(args)}` "
                                  f"within {CLIENT_DEADLINE_S:.0f} s: check that it runs.") from None


def acquire(place: str, coordinator: str | None, wait_s: float) -> None:
    """Acquire `place`, waiting up to `wait_s` while another client holds it."""
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        run = client(coordinator, "--place", place, "acquire")
        if run.returncode == 0:
            return
        why = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no answer"]
        if not any(word in why[0] for word in HELD):
            raise InfrastructureError(f"could not acquire place {place} ({why[0]}): check the place and the "
                                      "coordinator (--lg-coordinator or LG_COORDINATOR).")
        if time.monotonic() > deadline:
            raise InfrastructureError(f"place {place} stayed held for {wait_s:.0f} s ({why[0]}): wait, or release it "
                                      f"with `labgrid-client -p {place} release`.")
        if not said:
            log.info("place %s is held (%s): waiting up to %.0f s", place, why[0], wait_s)
            said = True
        time.sleep(RETRY_S)


def forget_labgrid_session() -> None:
    """End labgrid's process-wide RemotePlace session (it keeps the first boot's coordinator and its view
    of the places, which a later boot's acquisition does not reach): the next boot starts a fresh one."""
    import asyncio

    from labgrid.resource.common import ResourceManager
    from labgrid.resource.remote import RemotePlaceManager

    manager = ResourceManager.instances.pop(RemotePlaceManager, None)
    session = getattr(manager, "session", None)
    if session is not None:
        for step in (session.stop, session.close):
            try:
                session.loop.run_until_complete(asyncio.wait_for(step(), timeout=10))
            except Exception as exc:  # noqa: BLE001 (a coordinator already gone: nothing left to end)
                log.debug("ending labgrid's session: %s", exc)


def release(place: str, coordinator: str | None) -> None:
    """Release `place`; a coordinator that went away meanwhile has released it already."""
    run = client(coordinator, "--place", place, "release")
    if run.returncode != 0:
        log.warning("releasing place %s: %s", place, (run.stderr or run.stdout).strip())
