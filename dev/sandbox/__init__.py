"""Local platform sandbox: a stateful, loopback-only fake of the platform and Supabase APIs.

It lets the project's jobs and tests run offline against the same HTTP contract
(/work/shared/PLATFORM_API.md) as the real services, with faults and latency on demand.
"""

from dev.sandbox.server import Fault, SandboxServer

__all__ = ["Fault", "SandboxServer"]
